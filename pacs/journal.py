"""The intake journal: what C-STORE acknowledges is on disk before the index knows it.

A received instance is written to this process's journal folder and fsynced, file and
folder, and only then acknowledged: it is durable. An indexer thread then gives the file
its place in the archive (a hard link, fsynced), commits its index row, and removes the
journal entry. A crash at any point leaves the entry in the journal, and the next start
indexes it before the listener serves (`replay`): an acknowledged instance is never
lost, and indexing is idempotent (a row already there is kept).

The index commit is off the acknowledgement's path, so a C-STORE costs one file fsync
and one folder fsync; the modality does not wait for the database. An instance is in
C-FIND a few tens of milliseconds after its acknowledgement (`flush` waits for that).

Instances arriving together are indexed together (`BATCH_WINDOW`): their new names made
durable with one fsync per folder and their rows committed in one statement, rather than
a folder fsync and a database commit for each. Those flushes of the disk's cache
otherwise queue with the next instance's own fsyncs, and the indexer's interpreter time
with the receiving association's.

Each process has its own journal folder, locked with flock while it lives; a starting
process replays the folders of processes that are gone (several dicomserver processes
may share one archive).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom.filereader import _read_file_meta_info

from core.listeners import wait_drained
from pacs.dicom_header import InstanceHeader, read_header
from pacs.storage import FileStorage

logger = logging.getLogger(__name__)

JOURNAL_FOLDER = ".journal"
QUARANTINE_FOLDER = ".journal-failed"
LOCK_NAME = ".lock"
# How many entries may wait for the indexer before C-STORE waits too (back-pressure).
MAX_WAITING = 2000
# An entry the index refuses this many times (bad data, not an outage) is moved aside,
# still on disk, and reported; while the database is unreachable, entries just wait.
MAX_ATTEMPTS = 5
RETRY_DELAY = 0.5
# Seconds without an instance after which the indexer gives its connection back.
IDLE_AFTER = 2.0
MAX_OUTAGE_DELAY = 30.0
# After an entry comes, the indexer waits this long (seconds) for more to index with it,
# up to BATCH_SIZE: at 200 instances a second, a handful per batch.
BATCH_WINDOW = 0.02
BATCH_SIZE = 64


@dataclass
class Entry:
    path: Path  # the journal file
    header: InstanceHeader
    transfer_syntax: str
    calling_ae: str
    source_address: str
    size: int
    attempts: int = 0


Indexer = Callable[[Entry, FileStorage], None]
# Indexes what it can of a batch at once; returns the entries left for Indexer, one at a
# time (an exception leaves them all to it: indexing is idempotent).
BatchIndexer = Callable[[list[Entry], FileStorage], list[Entry]]


class Journal:
    """One process's journal folder and the thread that indexes what lands in it."""

    def __init__(
        self, storage: FileStorage, index: Indexer, index_batch: BatchIndexer | None = None
    ) -> None:
        self.storage = storage
        self.index = index
        self.index_batch = index_batch
        self.folder = storage.root / JOURNAL_FOLDER / uuid.uuid4().hex
        self._queue: queue.Queue[Entry | None] = queue.Queue(maxsize=MAX_WAITING)
        self._sequence = 0
        self._sequence_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> int:
        """Lock our folder, index what dead processes left, then index as instances arrive."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.folder / LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o640)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._thread = threading.Thread(target=self._run, name="archive-indexer", daemon=True)
        self._thread.start()
        replayed = self.replay()
        self.flush()
        return replayed

    def stop(self, timeout: float = 30.0) -> None:
        """Index what is waiting, then stop; anything left stays for the next start."""
        if self in _current:
            _current.remove(self)  # C-STORE no longer sends instances here
        if self._thread is None:
            return
        self.flush(timeout)
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        with contextlib.suppress(OSError):
            (self.folder / LOCK_NAME).unlink()
            self.folder.rmdir()

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until everything accepted so far is indexed (or set aside)."""
        return wait_drained(self._queue, timeout)

    # -- intake ----------------------------------------------------------------------

    def accept(
        self,
        header: InstanceHeader,
        chunks: list[bytes],
        *,
        transfer_syntax: str,
        calling_ae: str,
        source_address: str,
    ) -> None:
        """Make the instance durable in the journal, then queue it for the index."""
        with self._sequence_lock:
            self._sequence += 1
            number = self._sequence
        relative = f"{JOURNAL_FOLDER}/{self.folder.name}/{number:012d}.dcm"
        size = self.storage.write(relative, chunks)
        entry = Entry(
            self.storage.path(relative), header, transfer_syntax, calling_ae, source_address, size
        )
        self._queue.put(entry)  # blocks when the indexer is far behind

    # -- replay ----------------------------------------------------------------------

    def replay(self) -> int:
        """Queue the entries of journal folders whose process is gone; return how many."""
        count = 0
        root = self.storage.root / JOURNAL_FOLDER
        for folder in sorted(root.iterdir()) if root.exists() else []:
            if folder == self.folder or not folder.is_dir():
                continue
            lock = _try_lock(folder / LOCK_NAME)
            if lock is None:
                continue  # its process still runs and indexes its own
            try:
                for path in sorted(folder.iterdir()):
                    if path.name.endswith(".tmp"):
                        path.unlink()  # never acknowledged: half-written
                    elif path.suffix == ".dcm":
                        self._queue.put(_entry_from_file(path))
                        count += 1
                self.flush()
                with contextlib.suppress(OSError):
                    (folder / LOCK_NAME).unlink()
                    folder.rmdir()
            finally:
                os.close(lock)
        if count:
            logger.warning("replayed %d journaled instance(s) left by a stopped process", count)
        return count

    # -- the indexer thread -----------------------------------------------------------

    def _run(self) -> None:
        from django.db import close_old_connections, connections

        while True:
            try:
                first = self._queue.get(timeout=IDLE_AFTER)
            except queue.Empty:
                # Idle: the connection goes back to the pool. While instances keep coming
                # the thread keeps it (a checkout per instance cost a tenth of indexing).
                close_old_connections()
                continue
            batch, stopping = self._gather(first)
            try:
                self._index_all(batch)
            finally:
                for _ in range(len(batch) + stopping):
                    self._queue.task_done()
            if stopping:
                connections.close_all()  # the thread ends: its connection goes back
                return

    def _gather(self, first: Entry | None) -> tuple[list[Entry], bool]:
        """FIRST and what else comes within BATCH_WINDOW; whether the stop sign came."""
        if first is None:
            return [], True
        batch = [first]
        if self.index_batch is None:
            return batch, False
        deadline = time.monotonic() + BATCH_WINDOW
        while len(batch) < BATCH_SIZE:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                entry = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if entry is None:
                return batch, True
            batch.append(entry)
        return batch, False

    def _index_all(self, batch: list[Entry]) -> None:
        left = batch
        if self.index_batch is not None and len(batch) > 1:
            from django.db import close_old_connections

            try:
                left = self.index_batch(batch, self.storage)
            except Exception:
                # One at a time, with the retries and waits for the database that brings.
                logger.exception("indexing %d instances together failed", len(batch))
                close_old_connections()
                left = batch
            kept = {id(entry) for entry in left}
            for entry in batch:
                if id(entry) not in kept:
                    entry.path.unlink(missing_ok=True)
        for entry in left:
            self._index_one(entry)

    def _index_one(self, entry: Entry) -> None:
        from django.db import InterfaceError, OperationalError, close_old_connections

        outage = 0
        while True:
            try:
                self.index(entry, self.storage)
            except (OperationalError, InterfaceError):
                # The database is away: wait for it as long as it takes; never set aside.
                outage += 1
                logger.exception(
                    "indexing %s waits for the database", entry.header.sop_instance_uid
                )
                close_old_connections()  # a broken connection is not used again
                time.sleep(min(RETRY_DELAY * 2 ** min(outage, 6), MAX_OUTAGE_DELAY))
                continue
            except Exception:
                entry.attempts += 1
                logger.exception(
                    "indexing %s failed (attempt %d)", entry.header.sop_instance_uid, entry.attempts
                )
                if entry.attempts >= MAX_ATTEMPTS:
                    self._quarantine(entry)
                    return
                close_old_connections()
                time.sleep(RETRY_DELAY * 2 ** (entry.attempts - 1))
                continue
            entry.path.unlink(missing_ok=True)
            return

    def _quarantine(self, entry: Entry) -> None:
        """Set an entry that cannot be indexed aside, on disk, for an administrator."""
        folder = self.storage.root / QUARANTINE_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{entry.header.sop_instance_uid}.{uuid.uuid4().hex[:8]}.dcm"
        shutil.move(entry.path, target)
        logger.error(
            "instance %s set aside in %s: it cannot be indexed",
            entry.header.sop_instance_uid,
            target,
        )


def _try_lock(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o640)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _entry_from_file(path: Path) -> Entry:
    """Rebuild a journal entry from its file (replay after a crash)."""
    raw = path.read_bytes()
    stream = io.BytesIO(raw)
    stream.seek(128 + 4)  # preamble and "DICM"
    meta = _read_file_meta_info(stream)
    syntax = str(meta.TransferSyntaxUID)
    header = read_header(raw[stream.tell() :], syntax)
    calling_ae = str(meta.get("SourceApplicationEntityTitle", "") or "")
    return Entry(path, header, syntax, calling_ae, "", len(raw))


_current: list[Journal] = []


def current() -> Journal | None:
    return _current[-1] if _current else None


def install(journal: Journal) -> None:
    """Make JOURNAL the process's journal (stopping the one before: tests start many)."""
    previous = current()
    if previous is not None:
        previous.stop()
        _current.clear()
    _current.append(journal)


def flush(timeout: float = 60.0) -> bool:
    journal = current()
    return journal.flush(timeout) if journal is not None else True


__all__ = ["BatchIndexer", "Entry", "Journal", "current", "flush", "install"]
