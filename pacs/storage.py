"""Where instance files live: a small interface, and the local-disk tier behind it.

Paths are relative to the tier's root and spread over 65,536 buckets by a hash of the
Study Instance UID, so that no directory grows to millions of entries:
    ab/cd/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
An object-store tier can implement the same interface later.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from django.conf import settings


class Storage(Protocol):
    def write(self, relative_path: str, chunks: list[bytes], *, replace: bool = False) -> int: ...
    def open(self, relative_path: str) -> BinaryIO: ...
    def path(self, relative_path: str) -> Path: ...
    def delete(self, relative_path: str) -> None: ...
    def exists(self, relative_path: str) -> bool: ...


# Temporary names: unique to this process (on shared storage too; the process id for forked
# children) and numbered within it. A uuid4 per file cost a system call and a few percent
# of the receiving thread's time.
_PROCESS_TOKEN = uuid.uuid4().hex
_temporary_numbers = itertools.count()


def _temporary_name(final: Path) -> Path:
    unique = f"{_PROCESS_TOKEN}.{os.getpid()}.{next(_temporary_numbers)}"
    return final.parent / f".{final.name}.{unique}.tmp"


def instance_path(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """Return the relative path of an instance file (UIDs hold only digits and dots: safe names)."""
    digest = hashlib.blake2b(study_uid.encode("ascii"), digest_size=2).hexdigest()
    return f"{digest[:2]}/{digest[2:]}/{study_uid}/{series_uid}/{sop_uid}.dcm"


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileStorage:
    """Files on a local (or mounted) filesystem, written durably."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._root = os.path.abspath(root)

    def path(self, relative_path: str) -> Path:
        # Lexical: relative paths are the archive's own (UIDs, digits and dots); ".." or an
        # absolute path from elsewhere is refused without asking the filesystem.
        full = os.path.normpath(os.path.join(self._root, relative_path))
        if not full.startswith(self._root + os.sep):
            raise ValueError(f"path escapes the storage root: {relative_path!r}")
        return Path(full)

    def write(self, relative_path: str, chunks: list[bytes], *, replace: bool = False) -> int:
        """Write CHUNKS to RELATIVE_PATH durably: fsynced, moved into place, directory fsynced.

        With REPLACE an existing file is replaced atomically; without, FileExistsError
        leaves it as it is. Returns the size written.
        """
        final = self.path(relative_path)
        directory = final.parent
        created = self._make_directories(directory)
        temporary = _temporary_name(final)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        size = 0
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                    size += written
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            temporary.unlink(missing_ok=True)
            raise
        os.close(fd)
        try:
            if replace:
                os.replace(temporary, final)
            else:
                os.link(temporary, final)  # atomic, and fails if the name is taken
        finally:
            temporary.unlink(missing_ok=True)
        _fsync_directory(directory)
        for parent in created:  # new directories must be durable in their parents too
            _fsync_directory(parent.parent)
        return size

    def adopt(self, source: Path, relative_path: str, *, replace: bool = False) -> None:
        """Give the durable file SOURCE (on this filesystem) a second name, RELATIVE_PATH.

        SOURCE keeps its name; the new directory entry is made durable. Without REPLACE an
        existing file raises FileExistsError and stays as it is.
        """
        final = self.path(relative_path)
        created = self._make_directories(final.parent)
        if replace:
            temporary = _temporary_name(final)
            os.link(source, temporary)
            os.replace(temporary, final)
        else:
            os.link(source, final)
        _fsync_directory(final.parent)
        for parent in created:
            _fsync_directory(parent.parent)

    def adopt_all(self, pairs: list[tuple[Path, str]]) -> list[bool]:
        """adopt() for many (SOURCE, RELATIVE_PATH) pairs, the new names made durable with
        one fsync per folder rather than one per file; tell which were adopted (False: the
        name was taken, and that file is left as it is)."""
        folders: dict[Path, None] = {}  # to fsync, in order (a dict: no duplicates)
        adopted = []
        for source, relative_path in pairs:
            final = self.path(relative_path)
            for created in self._make_directories(final.parent):
                folders[created.parent] = None
            try:
                os.link(source, final)
            except FileExistsError:
                adopted.append(False)
                continue
            folders[final.parent] = None
            adopted.append(True)
        for folder in folders:
            _fsync_directory(folder)
        return adopted

    def _make_directories(self, directory: Path) -> list[Path]:
        """Create DIRECTORY and its missing parents; return the ones created, deepest last."""
        missing: list[Path] = []
        current = directory
        while not current.exists():
            missing.append(current)
            current = current.parent
        for folder in reversed(missing):
            folder.mkdir(exist_ok=True)
        return list(reversed(missing))

    def open(self, relative_path: str) -> BinaryIO:
        return self.path(relative_path).open("rb")

    def exists(self, relative_path: str) -> bool:
        return self.path(relative_path).exists()

    def delete(self, relative_path: str) -> None:
        """Remove a file, and its series and study folders once they are empty."""
        final = self.path(relative_path)
        final.unlink(missing_ok=True)
        for folder in (final.parent, final.parent.parent):
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (or already gone): stop climbing

    def walk(self) -> Iterator[str]:
        """Yield the relative path of every stored file (for consistency checks)."""
        for path in self.root.rglob("*.dcm"):
            yield str(path.relative_to(self.root))


def default_storage() -> FileStorage:
    return FileStorage(settings.STORAGE_DIR)
