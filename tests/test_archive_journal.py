"""The intake journal: acknowledged means durable, even when the process dies before indexing."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import OperationalError, connection

from pacs import journal, services
from pacs.models import Instance, Series, Study
from pacs.storage import FileStorage
from tests import dcmtk
from tests import dicom_factory as make
from tests.netutil import LISTENING, manage_py, read_line, subprocess_env

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parent.parent


def _journal_files(storage: Path) -> list[Path]:
    return sorted((storage / journal.JOURNAL_FOLDER).rglob("*.dcm"))


def test_a_failing_index_is_retried_then_set_aside_but_never_dropped(
    tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(journal, "RETRY_DELAY", 0.001)
    storage = FileStorage(tmp_path)
    calls: list[str] = []

    def flaky(entry: journal.Entry, _storage: FileStorage) -> None:
        calls.append(entry.header.sop_instance_uid)
        if len(calls) < 3:
            raise OperationalError("database away")  # waited for, however long
        if entry.header.study_description == "ALWAYS BAD":
            raise ValueError("value too long for the index")  # bad data: set aside

    intake = journal.Journal(storage, flaky)
    intake.start()
    try:
        for description in ("FINE", "ALWAYS BAD"):
            ds = make.ct_instance(study_description=description)
            header = services._checked_header(
                make.encoded(ds), str(ds.file_meta.TransferSyntaxUID), None
            )
            intake.accept(
                header,
                [b"x"],
                transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
                calling_ae="T",
                source_address="",
            )
        assert intake.flush(10)
    finally:
        intake.stop()
    assert len(calls) == 3 + journal.MAX_ATTEMPTS  # two failures and a success, then five failures
    aside = list((tmp_path / journal.QUARANTINE_FOLDER).iterdir())
    assert len(aside) == 1 and aside[0].read_bytes() == b"x"
    assert _journal_files(tmp_path) == []


def test_a_dead_process_journal_is_indexed_at_start(tmp_path: Path) -> None:
    storage_root = Path(settings.STORAGE_DIR)
    dead = storage_root / journal.JOURNAL_FOLDER / "deadbeef"
    dead.mkdir(parents=True)
    datasets = make.series(3, patient_id="REPLAY1")
    for number, ds in enumerate(datasets):
        make.save(ds, tmp_path).rename(dead / f"{number:012d}.dcm")
    (dead / "000000000099.dcm.tmp").write_bytes(b"half written")
    intake = journal.Journal(FileStorage(storage_root), services.index_journal_entry)
    try:
        assert intake.start() == 3
    finally:
        intake.stop()
    assert Instance.objects.count() == 3
    assert Study.objects.get().dicom_patient_id == "REPLAY1"
    assert not dead.exists()
    for instance in Instance.objects.all():
        assert (storage_root / instance.file_path).exists()


def test_acknowledged_instances_survive_kill_9_before_indexing(tmp_path: Path) -> None:
    """Success while the database is locked; the server is killed; a restart indexes all."""
    database = tmp_path / "archive.sqlite3"
    env = subprocess_env(
        tmp_path,
        DATABASE_URL=f"sqlite:///{database}",
        DICOM_AE_TITLE="JOURNALED",
        SQLITE_BUSY_TIMEOUT="2",  # the association's audit row gives up soon; C-STORE goes on
    )
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    files = [make.save(ds, tmp_path / "send") for ds in make.series(4, patient_id="KILL9")]
    storage = Path(env["STORAGE_DIR"])
    blocker = sqlite3.connect(database, timeout=30)
    blocker.execute("BEGIN IMMEDIATE")  # the indexer cannot commit while this lasts
    try:
        with manage_py("dicomserver", "--port", "0", "--bind", "127.0.0.1", env=env) as server:
            port = read_line(server, LISTENING)["port"]
            sent = subprocess.run(
                [dcmtk.tool("storescu"), "-aec", "JOURNALED", "127.0.0.1", port, *map(str, files)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert sent.returncode == 0, sent.stderr
            assert len(_journal_files(storage)) == 4  # acknowledged, not yet indexed
            server.send_signal(signal.SIGKILL)
            server.wait(timeout=30)
    finally:
        blocker.rollback()
        blocker.close()
    with manage_py("dicomserver", "--port", "0", "--bind", "127.0.0.1", env=env) as server:
        read_line(server, LISTENING)  # the journal is replayed before the listener opens
        rows = sqlite3.connect(database).execute("SELECT COUNT(*) FROM pacs_instance").fetchone()[0]
        server.send_signal(signal.SIGTERM)
    assert rows == 4
    assert _journal_files(storage) == []


def _accepted(intake: journal.Journal, datasets: list[Any]) -> list[journal.Entry]:
    """Journal DATASETS as C-STORE does, without the indexer thread; return their entries."""
    intake.folder.mkdir(parents=True, exist_ok=True)
    for ds in datasets:
        encoded = make.encoded(ds)
        syntax = str(ds.file_meta.TransferSyntaxUID)
        header = services._checked_header(encoded, syntax, None)
        intake.accept(
            header,
            [services.file_meta_bytes(header, syntax, "T"), encoded],
            transfer_syntax=syntax,
            calling_ae="T",
            source_address="",
        )
    return [intake._queue.get_nowait() for _ in datasets]  # type: ignore[misc]


def _assert_indexed_once(storage_root: Path, count: int) -> None:
    study = Study.objects.get()
    assert Instance.objects.count() == count
    assert study.number_of_instances == count
    assert Series.objects.get().number_of_instances == count
    sizes = [instance.file_size for instance in Instance.objects.all()]
    assert study.size_bytes == sum(sizes) > 0
    for instance in Instance.objects.all():
        assert (storage_root / instance.file_path).stat().st_size == instance.file_size
    assert _journal_files(storage_root) == []


def test_instances_arriving_together_are_indexed_together() -> None:
    services._INDEXER_CACHE.studies.clear()
    services._INDEXER_CACHE.series.clear()
    storage_root = Path(settings.STORAGE_DIR)
    storage = FileStorage(storage_root)
    intake = journal.Journal(storage, services.index_journal_entry, services.index_journal_entries)
    first, *rest = make.series(7, patient_id="BATCH1")
    intake._index_all(_accepted(intake, [first]))  # a new series: indexed on its own
    again = make.ct_instance(
        patient_id="BATCH1",
        study_uid=first.StudyInstanceUID,
        series_uid=first.SeriesInstanceUID,
    )
    again.SOPInstanceUID = first.SOPInstanceUID  # sent twice: kept once
    entries = _accepted(intake, [*rest, again])
    left = services.index_journal_entries(entries, storage)
    if connection.vendor == "postgresql":
        # All but the instance stored before went in one statement, their folder fsynced once.
        assert [entry.header.sop_instance_uid for entry in left] == [first.SOPInstanceUID]
        assert Instance.objects.count() == 7
    else:
        assert left == entries  # one at a time on other databases
    intake._index_all(entries)  # what the indexer thread does with the batch
    _assert_indexed_once(storage_root, 7)


def test_a_batch_that_fails_is_indexed_one_at_a_time(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    services._INDEXER_CACHE.studies.clear()
    services._INDEXER_CACHE.series.clear()
    storage_root = Path(settings.STORAGE_DIR)
    storage = FileStorage(storage_root)

    def failing(rows: list[dict[str, Any]]) -> int:
        raise OperationalError("connection lost mid-batch")

    monkeypatch.setattr(services, "_insert_all_counted_postgresql", failing)
    batches: list[int] = []

    def batch_then_fail(entries: list[journal.Entry], storage: FileStorage) -> list[journal.Entry]:
        batches.append(len(entries))
        left = services.index_journal_entries(entries, storage)
        if left is entries:
            raise OperationalError("not PostgreSQL: fail all the same")
        return left

    intake = journal.Journal(storage, services.index_journal_entry, batch_then_fail)
    first, *rest = make.series(5, patient_id="BATCH2")
    intake._index_all(_accepted(intake, [first]))
    intake._index_all(_accepted(intake, rest))  # the names already linked are taken over
    assert batches == [4]
    _assert_indexed_once(storage_root, 5)
