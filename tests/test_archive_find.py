"""C-FIND against the archive: every level, every matching kind, answered from the index."""

from __future__ import annotations

import glob
from pathlib import Path

import pydicom
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from pacs import selectors
from pacs.selectors import build_query, find
from tests import dicom_factory as make
from tests.archive import find as c_find
from tests.archive import query, running_archive, store
from tests.netutil import DEADLINE

pytestmark = pytest.mark.django_db(transaction=True)

CHARSET_FILES = sorted(
    glob.glob(str(Path(pydicom.__file__).parent / "data" / "charset_files" / "chr*.dcm"))
)


@pytest.fixture
def archive():  # type: ignore[no-untyped-def]
    with running_archive() as port:
        store(
            port,
            make.series(
                2,
                patient_name="Alpha^Ann",
                patient_id="P1",
                study_date="20260110",
                accession="ACC1",
                study_time="083000",
            ),
        )
        store(
            port,
            make.series(
                3,
                patient_name="Beta^Bob",
                patient_id="P2",
                study_date="20260120",
                accession="ACC2",
                modality="MR",
                study_time="143000",
            ),
        )
        store(
            port,
            make.series(
                1,
                patient_name="alphabet^Carl",
                patient_id="P3",
                study_date="20260201",
                accession="ACC3",
                study_time="120000",
            ),
        )
        yield port


def _values(matches, keyword):  # type: ignore[no-untyped-def]
    return sorted(str(m.get(keyword, "")) for m in matches)


def test_study_level_single_value(archive: int) -> None:
    matches, final = c_find(
        archive,
        query(
            "STUDY",
            PatientID="P2",
            StudyInstanceUID="",
            PatientName="",
            NumberOfStudyRelatedInstances="",
            InstanceAvailability="",
        ),
    )
    assert final.Status == 0x0000
    assert len(matches) == 1
    assert matches[0].PatientName == "Beta^Bob"
    assert int(matches[0].NumberOfStudyRelatedInstances) == 3
    assert matches[0].InstanceAvailability == "ONLINE"  # PS3.4 C.4.1.1.3.1.2


def test_person_names_match_with_wildcards_and_without_case(archive: int) -> None:
    matches, _ = c_find(archive, query("STUDY", PatientName="ALPHA*", PatientID=""))
    assert _values(matches, "PatientID") == ["P1", "P3"]
    matches, _ = c_find(archive, query("STUDY", PatientName="?eta^bob", PatientID=""))
    assert _values(matches, "PatientID") == ["P2"]


def test_date_and_time_ranges(archive: int) -> None:
    matches, _ = c_find(archive, query("STUDY", StudyDate="20260115-20260201", AccessionNumber=""))
    assert _values(matches, "AccessionNumber") == ["ACC2", "ACC3"]
    matches, _ = c_find(archive, query("STUDY", StudyDate="-20260110", AccessionNumber=""))
    assert _values(matches, "AccessionNumber") == ["ACC1"]
    matches, _ = c_find(archive, query("STUDY", StudyTime="1200-1500", AccessionNumber=""))
    assert _values(matches, "AccessionNumber") == ["ACC2", "ACC3"]


def test_list_of_uids_and_modalities_in_study(archive: int) -> None:
    everything, _ = c_find(archive, query("STUDY", StudyInstanceUID="", AccessionNumber=""))
    assert len(everything) == 3
    two = [m.StudyInstanceUID for m in everything[:2]]
    matches, _ = c_find(archive, query("STUDY", StudyInstanceUID=two, AccessionNumber=""))
    assert sorted(m.StudyInstanceUID for m in matches) == sorted(two)
    matches, _ = c_find(archive, query("STUDY", ModalitiesInStudy="MR", AccessionNumber=""))
    assert _values(matches, "AccessionNumber") == ["ACC2"]
    assert matches[0].ModalitiesInStudy == "MR"


def test_patient_level_with_counts(archive: int) -> None:
    matches, _ = c_find(
        archive,
        query(
            "PATIENT",
            PatientID="P2",
            PatientName="",
            NumberOfPatientRelatedStudies="",
            NumberOfPatientRelatedInstances="",
        ),
        model="patient",
    )
    assert len(matches) == 1
    assert matches[0].PatientName == "Beta^Bob"
    assert int(matches[0].NumberOfPatientRelatedStudies) == 1
    assert int(matches[0].NumberOfPatientRelatedInstances) == 3


def test_series_and_image_levels(archive: int) -> None:
    study, _ = c_find(archive, query("STUDY", PatientID="P2", StudyInstanceUID=""))
    uid = study[0].StudyInstanceUID
    series, _ = c_find(
        archive,
        query(
            "SERIES",
            StudyInstanceUID=uid,
            SeriesInstanceUID="",
            Modality="",
            NumberOfSeriesRelatedInstances="",
        ),
    )
    assert len(series) == 1 and series[0].Modality == "MR"
    assert int(series[0].NumberOfSeriesRelatedInstances) == 3
    images, _ = c_find(
        archive,
        query(
            "IMAGE",
            StudyInstanceUID=uid,
            SeriesInstanceUID=series[0].SeriesInstanceUID,
            SOPInstanceUID="",
            InstanceNumber="",
            Rows="",
        ),
    )
    assert sorted(int(i.InstanceNumber) for i in images) == [1, 2, 3]
    assert all(int(i.Rows) == 32 for i in images)


def test_a_bad_query_gets_a_failure_with_a_reason_and_the_server_goes_on(archive: int) -> None:
    _, final = c_find(archive, query("STUDY", StudyDate="2026-01-01x", PatientID=""))
    assert final.Status == 0xA900
    assert "StudyDate" in final.ErrorComment
    _, final = c_find(archive, query("PATIENT", PatientID=""), model="study")
    assert final.Status == 0xA900
    _, final = c_find(archive, query("STUDY", StudyInstanceUID="\\", PatientID=""))
    assert final.Status == 0xA900  # a list of UIDs with none in it
    assert "StudyInstanceUID" in final.ErrorComment
    matches, final = c_find(archive, query("STUDY", PatientID="P1"))
    assert final.Status == 0x0000 and len(matches) == 1


def test_every_query_is_in_the_audit_trail_once_answered(archive: int) -> None:
    from core import audit
    from core.models import AuditEvent

    matches, final = c_find(archive, query("STUDY", PatientID="P1", StudyDate=""))
    assert final.Status == 0x0000 and len(matches) == 1
    # Sent once the final response is (core.audit.record_answered), waited for by the
    # association's end at the latest.
    assert audit.flush(timeout=DEADLINE)
    event = AuditEvent.objects.get(action="query", channel="dicom")
    assert event.object_type == "pacs.study"
    assert event.detail.startswith("1 result(s); C-FIND study root; keys: ")
    assert "PatientID" in event.detail


def test_a_query_row_the_database_refuses_goes_to_the_log_and_the_listener_goes_on(
    archive: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The answer is out before the row is written: a row the database refuses goes to the
    audit writer, which logs it whole once it has tried (core.audit.WRITE_ATTEMPTS)."""
    from core import audit
    from core.models import AuditEvent

    built = audit._build

    def unwritable(action: str, *args: object, **kwargs: object) -> AuditEvent:
        event = built(action, *args, **kwargs)  # type: ignore[arg-type]
        if action == "query":
            event.detail = None  # type: ignore[assignment]  # NOT NULL: the INSERT fails
        return event

    monkeypatch.setattr(audit, "_build", unwritable)
    monkeypatch.setattr(audit, "WRITE_ATTEMPTS", 1)
    matches, final = c_find(archive, query("STUDY", PatientID="P1"))
    assert final.Status == 0x0000 and len(matches) == 1
    assert audit.flush(timeout=DEADLINE)
    assert not AuditEvent.objects.filter(action="query").exists()
    assert "audit event cannot be written" in caplog.text
    assert "C-FIND study root" in caplog.text  # the row, whole, in the log
    monkeypatch.setattr(audit, "_build", built)
    matches, final = c_find(archive, query("STUDY", PatientID="P1"))  # the listener goes on
    assert final.Status == 0x0000 and len(matches) == 1
    assert audit.flush(timeout=DEADLINE)
    assert AuditEvent.objects.filter(action="query").count() == 1


@pytest.mark.parametrize("level", ["PATIENT", "STUDY", "SERIES", "IMAGE"])
def test_one_query_is_one_sql_statement_whatever_the_matches(archive: int, level: str) -> None:
    keys = query(level, PatientID="", PatientName="*", StudyInstanceUID="")
    if level in ("SERIES", "IMAGE"):
        keys.SeriesInstanceUID = ""
        keys.Modality = ""
    if level == "IMAGE":
        keys.SOPInstanceUID = ""
    with CaptureQueriesContext(connection) as captured:
        results = list(find(keys, "patient", retrieve_ae_title="ARCHIVE"))
    assert results
    assert len(captured.captured_queries) == 1


@pytest.mark.parametrize("level", ["PATIENT", "STUDY", "IMAGE"])
def test_many_matches_stream_after_the_first_rows(
    archive: int, level: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = query(level, PatientID="", StudyInstanceUID="", SeriesInstanceUID="")
    if level == "IMAGE":
        keys.SOPInstanceUID = ""
    expected = [str(item) for item in find(keys, "patient", retrieve_ae_title="ARCHIVE")]
    assert len(expected) >= 2
    monkeypatch.setattr(selectors, "FIRST_ROWS", 1)
    with CaptureQueriesContext(connection) as captured:
        streamed = [str(item) for item in find(keys, "patient", retrieve_ae_title="ARCHIVE")]
    assert streamed == expected  # every match once, in the same order
    assert len(captured.captured_queries) == 2  # the first rows, then the cursor


def test_build_query_refuses_an_unknown_level() -> None:
    from pacs.selectors import QueryError

    with pytest.raises(QueryError, match="QueryRetrieveLevel"):
        build_query(query("FRAME"), "study")


@pytest.mark.parametrize("path", CHARSET_FILES, ids=lambda p: Path(p).name)
def test_character_sets_round_trip(path: str) -> None:
    ds = pydicom.dcmread(path)
    if "SOPClassUID" not in ds or "StudyInstanceUID" not in ds:
        pytest.skip("not a storable instance")
    with running_archive() as port:
        status = store(port, [ds])[0]
        assert status.Status == 0x0000, getattr(status, "ErrorComment", "")
        matches, _ = c_find(
            port, query("STUDY", StudyInstanceUID=ds.StudyInstanceUID, PatientName="")
        )
    assert len(matches) == 1
    assert str(matches[0].PatientName) == str(ds.PatientName)
