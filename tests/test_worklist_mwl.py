"""The Modality Worklist SCP: matching, return keys, character sets, time zones, failures."""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

from core import audit
from core.dicom_server import ArchiveAE
from core.models import AuditEvent
from ris import services
from ris.models import Order
from tests import dcmtk, factories
from tests.mwl_query import worklist_query
from tests.netutil import DEADLINE, wait_until
from tests.worklist_scu import (
    MODALITY_AE,
    SCP_AE,
    WORKLIST_SERVICES,
    association,
    find,
    running_scp,
)
from worklist import selectors
from worklist.dimse import (
    STATUS_CANCEL,
    STATUS_IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    STATUS_PENDING,
    STATUS_PENDING_OPTIONAL_KEYS_NOT_SUPPORTED,
    STATUS_SUCCESS,
)

UTC = dt.UTC


def at(day: int, hour: int, minute: int = 0) -> dt.datetime:
    """A moment in January 2026, in UTC (the department below is on UTC+1 then)."""
    return dt.datetime(2026, 1, day, hour, minute, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _department(settings: Any) -> None:
    settings.TIME_ZONE = "Europe/Berlin"
    settings.DICOM_SERVICES = WORKLIST_SERVICES


@pytest.fixture
def schedule(db: None) -> dict[str, Order]:
    """Five exams for three synthetic patients; one of them cancelled."""
    ct = factories.room("CT 1", "CT", "CT1")
    mr = factories.room("MR 1", "MR", "MR1")
    head = factories.procedure("CTHEAD", "CT", name="CT head without contrast")
    knee = factories.procedure("MRKNEE", "MR", name="MR knee")
    muller = factories.patient(
        "Müller",
        "Hans",
        sex="M",
        birth_date=dt.date(1960, 2, 3),
        identifiers=[services.IdentifierInput("M-1", "HOSP_A")],
    )
    yamada = factories.patient(
        "山田",
        "太郎",
        identifiers=[
            services.IdentifierInput("Y-1", "HOSP_A"),
            services.IdentifierInput("NY-9", "NATIONAL"),
        ],
    )
    doe = factories.patient("Doe", "Jane", identifiers=[services.IdentifierInput("D-1", "HOSP_B")])
    orders = {
        "muller": factories.order(
            muller,
            start=at(5, 8),  # 09:00 local
            procedure_type=head,
            in_room=ct,
            referring_physician_name="Referrer^Rob",
            performing_physician_name="Radiologist^Rita",
            priority="stat",
            reason="Headache",
        ),
        "yamada": factories.order(yamada, start=at(5, 13), procedure_type=knee, in_room=mr),
        "doe_tomorrow": factories.order(doe, start=at(6, 7, 30), procedure_type=head, in_room=ct),
        # 23:30 UTC on the 4th is 00:30 on the 5th in the department.
        "doe_midnight": factories.order(doe, start=at(4, 23, 30), procedure_type=head, in_room=ct),
        "cancelled": factories.order(muller, start=at(5, 10), procedure_type=head, in_room=ct),
    }
    services.cancel_order(orders["cancelled"], "booked twice")
    return orders


def accessions(query: Dataset) -> list[str]:
    return [str(reply.AccessionNumber) for reply in selectors.find_worklist_items(query)]


def names(orders: dict[str, Order], *keys: str) -> list[str]:
    return [orders[key].accession_number for key in keys]


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (
            {"ScheduledStationAETitle": "CT1", "ScheduledProcedureStepStartDate": "20260105"},
            ["doe_midnight", "muller"],
        ),
        ({"ScheduledStationAETitle": "ct1"}, []),  # AE titles match case-sensitively
        ({"Modality": "MR"}, ["yamada"]),
        (
            {"Modality": "CT\\MR", "ScheduledProcedureStepStartDate": "20260105"},
            ["doe_midnight", "muller", "yamada"],
        ),
        ({"ScheduledProcedureStepStartDate": "-20260104"}, []),  # the 4th in UTC only
        (
            # One period, 5 January 08:00 to 6 January 10:00 (PS3.4 C.2.2.2.5).
            {
                "ScheduledProcedureStepStartDate": "20260105-20260106",
                "ScheduledProcedureStepStartTime": "0800-1000",
            },
            ["muller", "yamada", "doe_tomorrow"],
        ),
        ({"ScheduledProcedureStepStartTime": "0800-1000"}, ["muller", "doe_tomorrow"]),
        ({"ScheduledProcedureStepStartTime": "0030"}, ["doe_midnight"]),
        ({"ScheduledStationName": "MR 1"}, ["yamada"]),
        ({"ScheduledPerformingPhysicianName": "radiologist*"}, ["muller"]),
        ({"PatientName": "müll*"}, ["muller"]),
        ({"PatientName": "MÜLLER^HANS"}, ["muller"]),
        ({"PatientName": "MULLER*"}, []),
        ({"PatientName": "*^jane"}, ["doe_midnight", "doe_tomorrow"]),
        ({"PatientName": "D?E^J*"}, ["doe_midnight", "doe_tomorrow"]),
        ({"PatientName": "山田*"}, ["yamada"]),
        ({"PatientName": "=山田^太郎"}, ["yamada"]),
        ({"PatientID": "Y-1"}, ["yamada"]),
        ({"PatientID": "M-1", "IssuerOfPatientID": "HOSP_B"}, []),
        ({"ReferringPhysicianName": "REFERRER^ROB"}, ["muller"]),
        ({"RequestedProcedureID": "1", "Modality": "MR"}, ["yamada"]),
    ],
)
def test_matching_keys(
    schedule: dict[str, Order], keys: dict[str, str], expected: list[str]
) -> None:
    assert accessions(worklist_query(**keys)) == names(schedule, *expected)


def test_single_value_keys_of_one_exam(schedule: dict[str, Order]) -> None:
    order = schedule["doe_tomorrow"]
    step = order.requested_procedures.get().steps.get()
    study_uid = order.requested_procedures.get().study_instance_uid
    for keys in (
        {"AccessionNumber": order.accession_number},
        {"ScheduledProcedureStepID": step.sps_id},
        {"StudyInstanceUID": study_uid},
    ):
        assert accessions(worklist_query(**keys)) == [order.accession_number], keys


def test_the_identifier_matched_is_the_one_returned(schedule: dict[str, Order]) -> None:
    replies = list(
        selectors.find_worklist_items(worklist_query(PatientID="NY-9", IssuerOfPatientID=""))
    )
    assert [(r.PatientID, r.IssuerOfPatientID) for r in replies] == [("NY-9", "NATIONAL")]
    replies = list(selectors.find_worklist_items(worklist_query(Modality="MR")))
    assert [(r.PatientID, r.IssuerOfPatientID) for r in replies] == [("Y-1", "HOSP_A")]


def test_only_scheduled_and_arrived_steps_are_on_the_worklist(schedule: dict[str, Order]) -> None:
    services.check_in(schedule["yamada"])
    started = schedule["doe_tomorrow"].requested_procedures.get().steps.get()
    services.start_exam([started], started_at=at(6, 7, 30))
    replies = list(selectors.find_worklist_items(worklist_query()))
    assert [reply.AccessionNumber for reply in replies] == names(
        schedule, "doe_midnight", "muller", "yamada"
    )
    statuses = [
        reply.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus for reply in replies
    ]
    assert statuses == ["SCHEDULED", "SCHEDULED", "ARRIVED"]
    assert accessions(worklist_query(ScheduledProcedureStepStatus="ARRIVED")) == names(
        schedule, "yamada"
    )
    assert schedule["cancelled"].accession_number not in accessions(
        worklist_query(AccessionNumber=schedule["cancelled"].accession_number)
    )


def test_the_reply_carries_what_the_modality_needs_in_local_time(
    schedule: dict[str, Order],
) -> None:
    order = schedule["muller"]
    requested = order.requested_procedures.get()
    step = requested.steps.get()
    (reply,) = selectors.find_worklist_items(worklist_query(AccessionNumber=order.accession_number))
    assert reply.PatientName == "Müller^Hans"
    assert (reply.PatientID, reply.IssuerOfPatientID) == ("M-1", "HOSP_A")
    assert (reply.PatientBirthDate, reply.PatientSex) == ("19600203", "M")
    assert reply.ReferringPhysicianName == "Referrer^Rob"
    assert reply.StudyInstanceUID == requested.study_instance_uid
    assert reply.RequestedProcedureID == "1"
    assert reply.RequestedProcedureDescription == "CT head without contrast"
    code = reply.RequestedProcedureCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("CTHEAD", "99RISPACS")
    assert reply.RequestedProcedurePriority == "STAT"
    assert reply.AdmissionID == ""
    assert reply.SpecificCharacterSet == "ISO_IR 192"
    sps = reply.ScheduledProcedureStepSequence[0]
    assert sps.ScheduledProcedureStepStartDate == "20260105"
    assert sps.ScheduledProcedureStepStartTime == "090000"  # 08:00 UTC in Berlin
    assert (sps.ScheduledStationAETitle, sps.Modality) == ("CT1", "CT")
    assert sps.ScheduledProcedureStepID == step.sps_id
    assert sps.ScheduledPerformingPhysicianName == "Radiologist^Rita"


def test_a_query_in_its_own_time_zone_is_answered_in_it(schedule: dict[str, Order]) -> None:
    query = worklist_query(
        ScheduledProcedureStepStartDate="20260104", TimezoneOffsetFromUTC="+0000"
    )
    (reply,) = selectors.find_worklist_items(query)
    assert reply.AccessionNumber == schedule["doe_midnight"].accession_number
    sps = reply.ScheduledProcedureStepSequence[0]
    assert (sps.ScheduledProcedureStepStartDate, sps.ScheduledProcedureStepStartTime) == (
        "20260104",
        "233000",
    )
    assert reply.TimezoneOffsetFromUTC == "+0000"


def test_only_the_keys_asked_for_come_back(schedule: dict[str, Order]) -> None:
    query = Dataset()
    query.PatientName = "Doe*"
    item = Dataset()
    item.Modality = ""
    query.ScheduledProcedureStepSequence = [item]
    query.RequestedProcedureCodeSequence = []  # an empty sequence asks for all of it
    replies = list(selectors.find_worklist_items(query))
    assert len(replies) == 2
    reply = replies[0]
    assert sorted(element.keyword for element in reply) == [
        "PatientName",
        "RequestedProcedureCodeSequence",
        "ScheduledProcedureStepSequence",
    ]
    assert [element.keyword for element in reply.ScheduledProcedureStepSequence[0]] == ["Modality"]
    assert reply.RequestedProcedureCodeSequence[0].CodeMeaning == "CT head without contrast"


def test_one_sql_query_whatever_the_number_of_matches(
    schedule: dict[str, Order], django_assert_max_num_queries: Any
) -> None:
    room = factories.room("CT 1", "CT", "CT1")
    for hour in range(10):
        patient = factories.patient(f"Bulk{hour}")
        factories.order(patient, start=at(7, hour), in_room=room)
    for query, count in (
        (worklist_query(ScheduledProcedureStepStartDate="20260107"), 10),
        (worklist_query(PatientName="müller*", PatientID="M-1"), 1),
        (worklist_query(), 14),
    ):
        with django_assert_max_num_queries(1):
            replies = list(selectors.find_worklist_items(query))
        assert len(replies) == count


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # the bad values are the point
@pytest.mark.parametrize(
    ("keys", "offending"),
    [
        ({"ScheduledProcedureStepStartDate": "20260107-20260105"}, (0x0040, 0x0002)),
        ({"ScheduledProcedureStepStartDate": "2026-01-05"}, (0x0040, 0x0002)),
        ({"ScheduledProcedureStepStartTime": "2500"}, (0x0040, 0x0003)),
        ({"PatientBirthDate": "1960-02-03"}, (0x0010, 0x0030)),
        ({"TimezoneOffsetFromUTC": "CET"}, (0x0008, 0x0201)),
    ],
)
def test_bad_keys_are_refused_naming_the_element(
    db: None, keys: dict[str, str], offending: tuple[int, int]
) -> None:
    with pytest.raises(selectors.InvalidQuery) as refused:
        selectors.find_worklist_items(worklist_query(**keys))
    assert refused.value.tag == Tag(*offending)


# -- Over the network ------------------------------------------------------------------


@pytest.fixture
def scp_ae(schedule: dict[str, Order]) -> Iterator[tuple[ArchiveAE, int]]:
    with running_scp() as (ae, port):
        yield ae, port


@pytest.fixture
def scp(scp_ae: tuple[ArchiveAE, int]) -> int:
    return scp_ae[1]


@pytest.mark.django_db(transaction=True)
def test_pynetdicom_scu_gets_the_worklist_of_its_station(
    scp: int, schedule: dict[str, Order]
) -> None:
    query = worklist_query(
        ScheduledStationAETitle="CT1", ScheduledProcedureStepStartDate="20260105"
    )
    matches, final = find(scp, query)
    assert final.Status == STATUS_SUCCESS
    assert [m.AccessionNumber for m in matches] == names(schedule, "doe_midnight", "muller")
    assert str(matches[1].PatientName) == "Müller^Hans"
    assert audit.flush()  # written once the association is idle or ends
    event = AuditEvent.objects.get(action="query", channel="dicom")
    assert event.actor_name == MODALITY_AE
    assert event.detail.startswith("2 result(s); MWL C-FIND completed")
    assert "ScheduledStationAETitle=CT1" in event.detail


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("character_set", "name", "expected_set"),
    [
        ("ISO_IR 100", "Müller*", "ISO_IR 100"),  # the query's own set, when it can carry the reply
        ("ISO_IR 192", "山田*", "ISO_IR 192"),
        ("\\ISO 2022 IR 87", "山田*", "ISO_IR 192"),  # JIS X 0208 with code extensions
        ("ISO_IR 100", "YAMADA*", None),  # not in Latin-1: nothing matches
    ],
)
def test_names_round_trip_in_the_right_character_set(
    scp: int, character_set: str, name: str, expected_set: str | None
) -> None:
    query = worklist_query(PatientName=name)
    query.SpecificCharacterSet = character_set
    matches, final = find(scp, query)
    assert final.Status == STATUS_SUCCESS
    if expected_set is None:
        assert matches == []
        return
    (match,) = matches
    assert match.SpecificCharacterSet == expected_set
    assert str(match.PatientName).upper().startswith(name.rstrip("*").upper())


@pytest.mark.django_db(transaction=True)
def test_a_key_we_do_not_know_is_returned_empty_with_a_warning(scp: int) -> None:
    query = worklist_query(Modality="MR")
    query.PatientState = ""  # a Patient Medical key the RIS does not hold
    with association(scp) as assoc:
        responses = list(assoc.send_c_find(query, ModalityWorklistInformationFind))
    statuses = [status.Status for status, _ in responses]
    assert statuses == [STATUS_PENDING_OPTIONAL_KEYS_NOT_SUPPORTED, STATUS_SUCCESS]
    assert responses[0][1].PatientState == ""


@pytest.mark.django_db(transaction=True)
def test_a_bad_query_fails_with_a_reason_and_the_server_goes_on(scp: int) -> None:
    bad = worklist_query(ScheduledProcedureStepStartDate="20260107-20260105")
    matches, final = find(scp, bad)
    assert matches == []
    assert final.Status == STATUS_IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    assert "ends before it starts" in final.ErrorComment
    assert Tag(final.OffendingElement) == Tag(0x0040, 0x0002)
    two_items = worklist_query()
    two_items.ScheduledProcedureStepSequence.append(Dataset())
    _, final = find(scp, two_items)
    assert final.Status == STATUS_IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    matches, final = find(scp, worklist_query(Modality="MR"))
    assert final.Status == STATUS_SUCCESS and len(matches) == 1


@pytest.mark.django_db(transaction=True)
def test_garbage_on_the_socket_leaves_the_worklist_serving(scp: int) -> None:
    with socket.create_connection(("127.0.0.1", scp), timeout=DEADLINE) as sock:
        sock.sendall(b"\x01\x00\x00\x00\x00\x10" + b"\xff" * 16)
    matches, final = find(scp, worklist_query(Modality="MR"))
    assert final.Status == STATUS_SUCCESS and len(matches) == 1


@pytest.mark.django_db(transaction=True)
def test_c_cancel_stops_the_replies(
    scp_ae: tuple[ArchiveAE, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    ae, port = scp_ae
    # The second reply is built only once the SCP has seen the C-CANCEL: no race.
    cancel_seen = threading.Event()
    prepare = selectors._prepare
    built: list[int] = []

    def slow_second(row: dict[str, Any], zone: dt.tzinfo) -> dict[str, Any]:
        built.append(1)
        if len(built) == 2:
            assert cancel_seen.wait(DEADLINE), "the test never sent C-CANCEL"
        return prepare(row, zone)

    monkeypatch.setattr(selectors, "_prepare", slow_second)
    with association(port) as assoc:
        responses = assoc.send_c_find(worklist_query(), ModalityWorklistInformationFind, msg_id=7)
        status, identifier = next(responses)
        assert status.Status == STATUS_PENDING and identifier is not None
        assoc.send_c_cancel(7, None, ModalityWorklistInformationFind)
        # The only way to see the SCP got it: its association holds the cancel request.
        wait_until(
            lambda: any(a.dimse.cancel_req for a in ae.active_associations) or None,
            what="the C-CANCEL at the SCP",
        )
        cancel_seen.set()
        rest = [status.Status for status, _ in responses]
    assert rest == [STATUS_CANCEL]
    assert audit.flush()
    assert AuditEvent.objects.filter(detail__contains="MWL C-FIND cancelled").exists()


# -- DCMTK as the independent peer -------------------------------------------------------


def _query_file(path: Path, query: Dataset) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ModalityWorklistInformationFind
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    query.file_meta = meta
    query.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.dcmtk
@pytest.mark.django_db(transaction=True)
def test_dcmtk_findscu_gets_the_worklist_with_names_intact(
    scp: int, schedule: dict[str, Order], tmp_path: Path
) -> None:
    findscu = dcmtk.tool("findscu")
    query = worklist_query(ScheduledProcedureStepStartDate="20260105")
    query.SpecificCharacterSet = "ISO_IR 192"
    out = tmp_path / "responses"
    out.mkdir()
    result = subprocess.run(
        [
            findscu,
            "-W",
            "-aet",
            MODALITY_AE,
            "-aec",
            SCP_AE,
            "-to",
            "20",
            "-X",
            "-od",
            str(out),
            "127.0.0.1",
            str(scp),
            str(_query_file(tmp_path / "query.dcm", query)),
        ],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    replies = [pydicom.dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]
    assert [str(reply.AccessionNumber) for reply in replies] == names(
        schedule, "doe_midnight", "muller", "yamada"
    )
    by_accession = {str(reply.AccessionNumber): reply for reply in replies}
    muller = by_accession[schedule["muller"].accession_number]
    yamada = by_accession[schedule["yamada"].accession_number]
    assert str(muller.PatientName) == "Müller^Hans"
    assert str(yamada.PatientName) == "山田^太郎"
    assert (
        yamada.StudyInstanceUID == schedule["yamada"].requested_procedures.get().study_instance_uid
    )
    assert yamada.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime == "140000"


@pytest.mark.dcmtk
@pytest.mark.django_db(transaction=True)
def test_dcmtk_findscu_with_a_bad_date_gets_a_failure(scp: int, tmp_path: Path) -> None:
    findscu = dcmtk.tool("findscu")
    result = subprocess.run(
        [
            findscu,
            "-W",
            "-aet",
            MODALITY_AE,
            "-aec",
            SCP_AE,
            "-to",
            "20",
            "-k",
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20269999",
            "-k",
            "PatientName",
            "-d",
            "127.0.0.1",
            str(scp),
        ],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    output = result.stdout + result.stderr
    assert "DIMSE Status                  : 0xa900" in output, output
    assert "(0040,0002)" in output.split("OffendingElement")[0].rsplit("\n", 1)[-1], output
    assert "[ScheduledProcedureStepStartDate: not a valid date" in output, output
