"""DCMTK's storescu, findscu, movescu, getscu and storescp as the archive's independent peer."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import _read_file_meta_info

from pacs.models import Instance, Study
from pacs.services import add_node
from tests import dcmtk
from tests import dicom_factory as make
from tests.archive import ARCHIVE_AE, flush, running_archive
from tests.netutil import wait_until

pytestmark = [pytest.mark.dcmtk, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def archive():  # type: ignore[no-untyped-def]
    with running_archive() as port:
        yield port


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a Part 10 file: everything after its File Meta Information."""
    with path.open("rb") as stream:
        stream.seek(128 + 4)
        _read_file_meta_info(stream)
        return stream.read()


def run(tool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [dcmtk.tool(tool), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, f"{tool} failed: {result.stdout}\n{result.stderr}"
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def dcmtk_storescp(ae_title: str, folder: Path) -> Iterator[int]:
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [dcmtk.tool("storescp"), "-aet", ae_title, "-od", str(folder), "--accept-all", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        # Answering C-ECHO, not just accepting connections: storescp serves one connection
        # at a time, and a bare probe could still hold it when the archive connects.
        wait_until(lambda: _answers_echo(port, ae_title), what="DCMTK storescp answering")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def _answers_echo(port: int, ae_title: str) -> bool:
    result = subprocess.run(
        [dcmtk.tool("echoscu"), "-to", "2", "-aec", ae_title, "127.0.0.1", str(port)],
        capture_output=True,
    )
    return result.returncode == 0


def _send_study(port: int, folder: Path, count: int = 3, **fields: object) -> list[Path]:
    files = [make.save(ds, folder) for ds in make.series(count, **fields)]
    run(
        "storescu", "-aet", "MODALITY", "-aec", ARCHIVE_AE, "127.0.0.1", str(port), *map(str, files)
    )
    flush()
    return files


def test_storescu_stores_byte_for_byte(archive: int, tmp_path: Path, settings) -> None:  # type: ignore[no-untyped-def]
    files = _send_study(archive, tmp_path / "out", patient_name="Dcmtkcase^Lee", patient_id="DK1")
    assert Instance.objects.count() == 3
    for path in files:
        sop_uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        stored = (
            Path(settings.STORAGE_DIR) / Instance.objects.get(sop_instance_uid=sop_uid).file_path
        )
        assert dataset_bytes(stored) == dataset_bytes(path)


def test_findscu_finds_the_study(archive: int, tmp_path: Path) -> None:
    _send_study(archive, tmp_path / "out", patient_name="Findcase^Kim", patient_id="DK2")
    result = run(
        "findscu",
        "-S",
        "-aet",
        "WORKSTN",
        "-aec",
        ARCHIVE_AE,
        "-X",
        "-od",
        str(tmp_path),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "PatientName=FINDCASE*",
        "-k",
        "PatientID",
        "-k",
        "StudyInstanceUID",
        "-k",
        "NumberOfStudyRelatedInstances",
        "127.0.0.1",
        str(archive),
    )
    responses = sorted(tmp_path.glob("rsp*.dcm"))
    assert len(responses) == 1, result.stderr
    answer = pydicom.dcmread(responses[0])
    assert answer.PatientID == "DK2"
    assert int(answer.NumberOfStudyRelatedInstances) == 3
    assert answer.StudyInstanceUID == Study.objects.get().study_instance_uid


def test_movescu_to_dcmtk_storescp_byte_for_byte(archive: int, tmp_path: Path) -> None:
    files = _send_study(archive, tmp_path / "out")
    study_uid = Study.objects.get().study_instance_uid
    with dcmtk_storescp("DCMTKWS", tmp_path / "moved") as port:
        add_node("DCMTKWS", "127.0.0.1", port)
        run(
            "movescu",
            "-S",
            "-aet",
            "WORKSTN",
            "-aec",
            ARCHIVE_AE,
            "-aem",
            "DCMTKWS",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study_uid}",
            "127.0.0.1",
            str(archive),
        )
    moved = sorted((tmp_path / "moved").iterdir())
    assert len(moved) == 3
    sent = {dataset_bytes(path) for path in files}
    assert {dataset_bytes(path) for path in moved} == sent


def test_getscu_byte_for_byte(archive: int, tmp_path: Path) -> None:
    files = _send_study(archive, tmp_path / "out", count=2)
    study_uid = Study.objects.get().study_instance_uid
    (tmp_path / "got").mkdir()
    run(
        "getscu",
        "-S",
        "-aet",
        "WORKSTN",
        "-aec",
        ARCHIVE_AE,
        "-od",
        str(tmp_path / "got"),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study_uid}",
        "127.0.0.1",
        str(archive),
    )
    got = sorted((tmp_path / "got").iterdir())
    assert {dataset_bytes(path) for path in got} == {dataset_bytes(path) for path in files}


def test_echoscu(archive: int) -> None:
    run("echoscu", "-aet", "WORKSTN", "-aec", ARCHIVE_AE, "127.0.0.1", str(archive))
