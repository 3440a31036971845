"""Inbound HL7 over real sockets: ADT and ORM change the RIS, bad content changes nothing."""

from __future__ import annotations

import datetime as dt
import socket
import threading
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.utils import timezone

from core.models import AuditEvent
from ris import selectors, services
from ris.hl7 import ack, inbound
from ris.hl7.mllp import START_BLOCK, encode_frame
from ris.hl7.models import InboundMessage
from ris.hl7.server import MLLPServer, start
from ris.models import (
    AssigningAuthority,
    Order,
    Patient,
    PatientIdentifier,
    ScheduledProcedureStep,
)
from tests import factories
from tests.hl7util import (
    ack_code,
    adt,
    connect,
    exchange,
    fields,
    message,
    orm,
    pid,
    receive,
)
from tests.netutil import DEADLINE, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

TIME_ZONE = "Europe/Berlin"


@pytest.fixture
def port(settings: Any) -> Iterator[int]:
    settings.TIME_ZONE = TIME_ZONE
    settings.HL7_SENDING_APPLICATION = "TESTRIS"
    settings.HL7_SENDING_FACILITY = "TESTRAD"
    factories.procedure("CTHEAD", "CT")
    factories.procedure("MRBRAIN", "MR", default_duration_minutes=45)
    listener: MLLPServer = start("127.0.0.1", 0, block=False)
    yield listener.port
    listener.stop()


def snapshot() -> tuple[int, ...]:
    """Counts of what a message could change."""
    return (
        Patient.objects.count(),
        PatientIdentifier.objects.count(),
        Order.objects.count(),
        ScheduledProcedureStep.objects.exclude(status="cancelled").count(),
        Order.objects.filter(status="cancelled").count(),
    )


def patient_with(value: str, issuer: str = "HOSP") -> Patient:
    patient = services.find_patient_by_identifier(value, issuer)
    assert patient is not None, f"no patient {value} ({issuer})"
    return patient


# ---------------------------------------------------------------- ADT and ORM applied


def test_adt_then_orm_puts_the_order_on_the_worklist(port: int) -> None:
    replies = exchange(
        port,
        adt("ADT-1", "A04", "PAT-0001^^^HOSP^MR~9001^^^NATION^NI", "TESTPERSON^ALEX^J"),
        orm("ORM-1", placer="PLC-100", code="CTHEAD", start="20250302100000", priority="S"),
    )
    assert [ack_code(reply) for reply in replies] == ["AA", "AA"]
    assert [fields(reply, "MSA")[2] for reply in replies] == ["ADT-1", "ORM-1"]

    patient = patient_with("PAT-0001")
    assert patient == patient_with("9001", "NATION")  # one person, two issuers
    assert (patient.family_name, patient.given_name, patient.middle_name) == (
        "TESTPERSON",
        "ALEX",
        "J",
    )
    assert patient.birth_date == dt.date(1980, 1, 1)
    assert patient.sex == "F"
    order = Order.objects.get(placer_order_number="PLC-100")
    assert order.patient == patient
    assert order.accession_number  # generated: the placer sent none
    assert order.priority == "stat"
    assert order.referring_physician_name == "REFERRER^RITA"
    assert order.reason == "Headache"
    step = ScheduledProcedureStep.objects.get(requested_procedure__order=order)
    assert step.status == ScheduledProcedureStep.Status.SCHEDULED
    assert step.modality == "CT"
    # No offset in the message: the department's local time (CET in March), stored in UTC.
    expected = dt.datetime(2025, 3, 2, 10, 0, tzinfo=ZoneInfo(TIME_ZONE))
    assert step.scheduled_start == expected
    assert step.scheduled_start.astimezone(dt.UTC).hour == 9
    assert step in selectors.steps_for_day(dt.date(2025, 3, 2))

    # Audited as HL7, with the sending application as the actor.
    events = AuditEvent.objects.filter(channel="hl7", actor_name="HIS")
    assert events.filter(action="create", object_type="ris.patient").count() == 1
    assert events.filter(action="create", object_type="ris.order").count() == 1
    assert {e.source_address.split(":")[0] for e in events} == {"127.0.0.1"}

    logged = InboundMessage.objects.order_by("id")
    assert [(m.message_type, m.control_id, m.status) for m in logged] == [
        ("ADT^A04", "ADT-1", "accepted"),
        ("ORM^O01", "ORM-1", "accepted"),
    ]
    assert all(m.patient_id == patient.pk for m in logged)
    assert logged[1].order_numbers.split() == ["PLC-100", order.accession_number]
    assert logged[1].ack.replace("\r", "\n").strip() == replies[1].replace("\r", "\n").strip()


def test_a_time_with_an_offset_keeps_it(port: int) -> None:
    exchange(port, orm("ORM-TZ", start="20250302100000-0500"))
    step = ScheduledProcedureStep.objects.get()
    assert step.scheduled_start == dt.datetime(2025, 3, 2, 15, 0, tzinfo=dt.UTC)


def test_orm_for_an_unknown_patient_registers_it(port: int) -> None:
    [reply] = exchange(port, orm("ORM-NEW", identifiers="NEW-7^^^HOSP^MR"))
    assert ack_code(reply) == "AA"
    assert Order.objects.get().patient == patient_with("NEW-7")


def test_the_accession_number_is_taken_when_the_placer_gives_one(port: int) -> None:
    [reply] = exchange(port, orm("ORM-ACC", placer="PLC-5", filler="ACC12345"))
    assert ack_code(reply) == "AA"
    assert Order.objects.get().accession_number == "ACC12345"


def test_omi_o23_books_with_the_accession_number_of_ipc(port: int) -> None:
    content = message(
        "OMI-1",
        "OMI^O23^OMI_O23",
        pid(),
        "PV1|1|O",
        "ORC|NW|PLC-OMI",
        "TQ1|1||||||20250304081500|20250304090000|A",
        "OBR|1|PLC-OMI||MRBRAIN^MR Brain^L",
        "IPC|ACC-OMI-1|RP1|1.2.3|SPS1|MR",
    )
    [reply] = exchange(port, content)
    assert ack_code(reply) == "AA", reply
    order = Order.objects.get()
    assert (order.accession_number, order.priority) == ("ACC-OMI-1", "urgent")
    step = ScheduledProcedureStep.objects.get()
    assert step.modality == "MR"
    assert step.scheduled_start == dt.datetime(2025, 3, 4, 8, 15, tzinfo=ZoneInfo(TIME_ZONE))


def test_a08_updates_what_it_sends_and_adds_new_identifiers(port: int) -> None:
    exchange(port, adt("A04-1", "A04", "PAT-0001^^^HOSP^MR", "TESTPERSON^ALEX", "19800101", "F"))
    patient = patient_with("PAT-0001")
    services.update_patient(patient, {"phone": "555-0100"})
    update = message(
        "A08-1",
        "ADT^A08^ADT_A01",
        "EVN|A08",
        # A new issuer's identifier; a new given name; PID-7 empty: unchanged; sex cleared.
        pid("PAT-0001^^^HOSP^MR~EMR-55^^^EMR^PI", "TESTPERSON^ALEXANDRA", "", '""'),
        "PV1|1|O",
    )
    [reply] = exchange(port, update)
    assert ack_code(reply) == "AA"
    patient.refresh_from_db()
    assert patient.given_name == "ALEXANDRA"
    assert patient.birth_date == dt.date(1980, 1, 1)
    assert patient.sex == "U"
    assert patient.phone == "555-0100"  # PID-13 not sent: left alone
    assert patient_with("EMR-55", "EMR") == patient
    assert AuditEvent.objects.filter(
        channel="hl7", actor_name="HIS", action="update", detail__contains="given_name"
    ).exists()


def test_a40_merges_and_later_messages_for_the_merged_id_reach_the_survivor(port: int) -> None:
    replies = exchange(
        port,
        adt("A04-S", "A04", "KEEP-1^^^HOSP^MR", "TESTPERSON^SAM"),
        adt("A04-M", "A04", "GONE-2^^^HOSP^MR", "TESTPERSON^SAMUEL"),
        orm("ORM-M", placer="PLC-M", identifiers="GONE-2^^^HOSP^MR"),
    )
    assert [ack_code(r) for r in replies] == ["AA", "AA", "AA"]
    survivor, merged = patient_with("KEEP-1"), patient_with("GONE-2")
    assert survivor != merged
    merge = message(
        "A40-1",
        "ADT^A40^ADT_A39",
        "EVN|A40",
        pid("KEEP-1^^^HOSP^MR", "TESTPERSON^SAM"),
        "MRG|GONE-2^^^HOSP^MR",
    )
    [reply] = exchange(port, merge)
    assert ack_code(reply) == "AA", reply

    merged.refresh_from_db()
    assert merged.merged_into_id == survivor.pk
    assert Order.objects.get(placer_order_number="PLC-M").patient_id == survivor.pk
    alias = PatientIdentifier.objects.get(value="GONE-2")
    assert (alias.patient_id, alias.is_alias) == (survivor.pk, True)
    assert patient_with("GONE-2") == survivor

    # Later messages naming the merged id resolve to the survivor.
    replies = exchange(
        port,
        orm("ORM-AFTER", placer="PLC-AFTER", identifiers="GONE-2^^^HOSP^MR"),
        adt("A08-AFTER", "A08", "GONE-2^^^HOSP^MR", "TESTPERSON^SAMMY"),
    )
    assert [ack_code(r) for r in replies] == ["AA", "AA"]
    assert Order.objects.get(placer_order_number="PLC-AFTER").patient_id == survivor.pk
    survivor.refresh_from_db()
    assert survivor.given_name == "SAMMY"
    # The same merge again changes nothing and is still accepted.
    [again] = exchange(port, merge.replace(b"A40-1", b"A40-2"))
    assert ack_code(again) == "AA"


def test_a40_for_an_unknown_merged_patient_is_an_error(port: int) -> None:
    exchange(port, adt("A04-S", "A04", "KEEP-1^^^HOSP^MR"))
    before = snapshot()
    merge = message("A40-X", "ADT^A40", "EVN|A40", pid("KEEP-1^^^HOSP^MR"), "MRG|NOBODY^^^HOSP^MR")
    [reply] = exchange(port, merge)
    assert ack_code(reply) == "AE"
    assert fields(reply, "ERR")[2] == "MRG^1^1"
    assert fields(reply, "ERR")[3].startswith(ack.UNKNOWN_KEY_IDENTIFIER)
    assert snapshot() == before


def test_cancel_takes_the_step_off_the_worklist(port: int) -> None:
    exchange(port, orm("NW-1", placer="PLC-CA"))
    order = Order.objects.get()
    [reply] = exchange(port, orm("CA-1", control="CA", placer="PLC-CA"))
    assert ack_code(reply) == "AA", reply
    order.refresh_from_db()
    assert order.status == Order.Status.CANCELLED
    step = ScheduledProcedureStep.objects.get()
    assert step.status == ScheduledProcedureStep.Status.CANCELLED
    assert step not in selectors.steps_for_day(dt.date(2025, 3, 2))
    assert AuditEvent.objects.filter(
        object_type="ris.order", channel="hl7", actor_name="HIS", detail__startswith="cancelled"
    ).exists()
    # Cancelling again is no error: the order is cancelled.
    [again] = exchange(port, orm("CA-2", control="CA", placer="PLC-CA"))
    assert ack_code(again) == "AA"


def test_cancel_of_a_started_exam_is_refused(port: int) -> None:
    exchange(port, orm("NW-1", placer="PLC-IP"))
    step = ScheduledProcedureStep.objects.get()
    services.start_exam([step], started_at=timezone.now())
    [reply] = exchange(port, orm("CA-1", control="CA", placer="PLC-IP"))
    assert ack_code(reply) == "AE"
    assert "cannot be cancelled" in fields(reply, "MSA")[3]
    assert Order.objects.get().status == Order.Status.IN_PROGRESS


def test_status_sc_with_ca_cancels_and_other_statuses_are_refused(port: int) -> None:
    exchange(port, orm("NW-1", placer="PLC-SC"))
    [refused] = exchange(port, orm("SC-1", control="SC", placer="PLC-SC", status="IP"))
    assert ack_code(refused) == "AE"
    assert fields(refused, "ERR")[2] == "ORC^1^5"
    [reply] = exchange(port, orm("SC-2", control="SC", placer="PLC-SC", status="CA"))
    assert ack_code(reply) == "AA"
    assert Order.objects.get().status == Order.Status.CANCELLED


def test_change_moves_the_start_and_changes_the_procedure(port: int) -> None:
    exchange(port, orm("NW-1", placer="PLC-XO", code="CTHEAD", start="20250302100000"))
    [reply] = exchange(
        port,
        orm("XO-1", control="XO", placer="PLC-XO", code="MRBRAIN", start="20250305143000"),
    )
    assert ack_code(reply) == "AA", reply
    step = ScheduledProcedureStep.objects.get()
    assert step.modality == "MR"
    assert step.scheduled_start == dt.datetime(2025, 3, 5, 14, 30, tzinfo=ZoneInfo(TIME_ZONE))
    assert step.scheduled_end - step.scheduled_start == dt.timedelta(minutes=45)
    assert step.requested_procedure.procedure_type.code == "MRBRAIN"
    event = AuditEvent.objects.get(object_type="ris.order", detail__startswith="changed")
    assert "procedure_type" in event.detail and "scheduled_start" in event.detail


def test_cancel_of_an_unknown_order_names_orc_2(port: int) -> None:
    [reply] = exchange(port, orm("CA-X", control="CA", placer="NO-SUCH"))
    assert ack_code(reply) == "AE"
    assert fields(reply, "ERR")[2] == "ORC^1^2"
    assert fields(reply, "ERR")[3].startswith(ack.UNKNOWN_KEY_IDENTIFIER)


def test_new_order_with_a_placer_number_in_use_is_refused(port: int) -> None:
    exchange(port, orm("NW-1", placer="PLC-DUP"))
    before = snapshot()
    [reply] = exchange(port, orm("NW-2", placer="PLC-DUP"))
    assert ack_code(reply) == "AE"
    assert fields(reply, "ERR")[3].startswith(ack.DUPLICATE_KEY_IDENTIFIER)
    assert snapshot() == before


# ---------------------------------------------------------------- bad content changes nothing


@pytest.mark.parametrize(
    ("content", "location", "code", "reason"),
    [
        (
            orm("BAD-CODE", code="NOSUCH", identifiers="NEW-1^^^HOSP^MR"),
            "OBR^1^4",
            ack.TABLE_VALUE_NOT_FOUND,
            "unknown procedure code 'NOSUCH'",
        ),
        (
            adt("NO-PID3", identifiers=""),
            "PID^1^3",
            ack.REQUIRED_FIELD_MISSING,
            "no patient identifier",
        ),
        (
            adt("NO-ISSUER", identifiers="PAT-9"),
            "PID^1^3^1^4",
            ack.REQUIRED_FIELD_MISSING,
            "no assigning authority",
        ),
        (adt("BAD-DATE", birth="19801399"), "PID^1^7", ack.DATA_TYPE_ERROR, "not a date"),
        (adt("BAD-SEX", sex="X"), "PID^1^8", ack.TABLE_VALUE_NOT_FOUND, "table 0001"),
        (
            orm("BAD-START", start="2025030X"),
            "ORC^1^7^1^4",
            ack.DATA_TYPE_ERROR,
            "not an HL7 date/time",
        ),
        (orm("BAD-PRIO", priority="Q"), "ORC^1^7^1^6", ack.TABLE_VALUE_NOT_FOUND, "0027"),
        (
            message("NO-PID", "ADT^A04", "EVN|A04", "PV1|1|O"),
            "PID^1",
            ack.SEGMENT_SEQUENCE_ERROR,
            "required segment PID is missing",
        ),
        (
            message("BAD-SEG", "ADT^A04", "EVN|A04", pid(), "P!D|1"),
            "P!D^1",
            ack.SEGMENT_SEQUENCE_ERROR,
            "is not a segment ID",
        ),
        (
            message("NOT-HL7-SEG", "ADT^A04", "EVN|A04", pid(), "XYZ|1"),
            "XYZ^1",
            ack.SEGMENT_SEQUENCE_ERROR,
            "XYZ is not an HL7 segment",
        ),
        (
            message("NO-ORC", "ORM^O01", pid(), "OBR|1|P||CTHEAD"),
            "ORC^1",
            ack.SEGMENT_SEQUENCE_ERROR,
            "required segment ORC is missing",
        ),
        (
            message("BAD-CS", "ADT^A04", "EVN|A04", pid(name="M\u00dcLLER^ANNA"), charset="ASCII"),
            "MSH^1^18",
            ack.DATA_TYPE_ERROR,
            "not valid ASCII",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) and value.startswith("^") else None,
)
def test_bad_content_gets_ae_naming_the_field_and_changes_nothing(
    port: int, content: bytes, location: str, code: str, reason: str
) -> None:
    exchange(port, adt("SEED", "A04", "SEED-1^^^HOSP^MR"))
    before = snapshot()
    [reply] = exchange(port, content)
    err = fields(reply, "ERR")
    assert fields(reply, "MSA")[1] == ack.APPLICATION_ERROR, reply
    assert err[2] == location
    assert err[3].split("^")[0] == code
    assert reason in err[8]
    assert snapshot() == before
    logged = InboundMessage.objects.get(control_id=fields(reply, "MSA")[2])
    assert logged.status == InboundMessage.Status.ERROR
    assert reason in logged.error


def test_version_2_3_errors_also_fill_err_1(port: int) -> None:
    [reply] = exchange(port, orm("V23", code="NOSUCH", version="2.3"))
    assert fields(reply, "ERR")[1] == "OBR^1^4^103&Table value not found&HL70357"


@pytest.mark.parametrize(
    ("content", "code", "text"),
    [
        (message("SIU-1", "SIU^S12"), ack.UNSUPPORTED_MESSAGE_TYPE, "SIU\\S\\S12 is not supported"),
        (
            message("A03-1", "ADT^A03", "EVN|A03", pid()),
            ack.UNSUPPORTED_EVENT_CODE,
            "ADT\\S\\A03 is not supported",
        ),
        (adt("V22", version="2.2"), ack.UNSUPPORTED_VERSION_ID, "version 2.2 is not supported"),
    ],
)
def test_unsupported_messages_get_ar_and_change_nothing(
    port: int, content: bytes, code: str, text: str
) -> None:
    before = snapshot()
    [reply] = exchange(port, content)
    assert fields(reply, "MSA")[1] == ack.APPLICATION_REJECT
    assert text in fields(reply, "MSA")[3]
    assert fields(reply, "ERR")[3].startswith(code)
    assert snapshot() == before
    assert InboundMessage.objects.get().status == InboundMessage.Status.REJECTED


@pytest.mark.parametrize(
    "content",
    [
        b"PID|1||PAT-0001^^^HOSP^MR||TESTPERSON^ALEX\r",  # no MSH
        b"MSH|^~|HIS|HOSP|RISPACS|RAD|20250301||ADT^A04|ENC-1|P|2.5.1\r",  # bad encoding chars
        b"MSH|^^\\&|HIS|HOSP|RISPACS|RAD|20250301||ADT^A04|ENC-2|P|2.5.1\r",  # repeated char
    ],
    ids=["no-msh", "short-encoding-characters", "repeated-encoding-character"],
)
def test_unreadable_headers_get_ar_are_kept_and_change_nothing(port: int, content: bytes) -> None:
    before = snapshot()
    [reply] = exchange(port, content)
    assert fields(reply, "MSA")[1] == ack.APPLICATION_REJECT
    assert snapshot() == before
    logged = InboundMessage.objects.get()
    assert (logged.status, logged.ack_code) == ("rejected", "AR")
    assert logged.raw == content.decode()


def test_a_truncated_frame_is_not_applied(port: int) -> None:
    whole = encode_frame(adt("TRUNC-1", identifiers="TRUNC-1^^^HOSP^MR"))
    with connect(port) as sock:
        sock.sendall(whole[: len(whole) // 2])  # the sender dies in mid-frame
    # A frame cut short and followed by a new one: the first is dropped, the second applied.
    with connect(port) as sock:
        sock.sendall(START_BLOCK + b"MSH|^~\\&|HIS|HOSP|RIS|RAD|2025||ADT^A04|TRUNC-2|P|2.5.1\rPI")
        sock.sendall(encode_frame(adt("AFTER", identifiers="AFTER-1^^^HOSP^MR")))
        [reply] = receive(sock, 1)
    assert fields(reply, "MSA")[1:3] == ["AA", "AFTER"]
    assert list(InboundMessage.objects.values_list("control_id", flat=True)) == ["AFTER"]
    assert services.find_patient_by_identifier("TRUNC-1", "HOSP") is None
    assert patient_with("AFTER-1")


def test_identifiers_of_two_patients_in_one_pid_are_refused(port: int) -> None:
    exchange(port, adt("A-1", identifiers="ONE^^^HOSP^MR"), adt("A-2", identifiers="TWO^^^HOSP^MR"))
    before = snapshot()
    [reply] = exchange(port, adt("A-3", "A08", identifiers="ONE^^^HOSP^MR~TWO^^^HOSP^MR"))
    assert ack_code(reply) == "AE"
    assert fields(reply, "ERR")[2] == "PID^1^3"
    assert "merge them first" in fields(reply, "ERR")[8]
    assert snapshot() == before


def test_character_set_of_msh_18_is_honoured(port: int) -> None:
    latin = message("L1", "ADT^A04", "EVN|A04", pid(name="M\u00dcLLER^J\u00d6RG"), charset="8859/1")
    content = latin.decode("utf-8").encode("latin-1")
    [reply] = exchange(port, content)
    assert ack_code(reply) == "AA", reply
    patient = patient_with("PAT-0001")
    assert (patient.family_name, patient.given_name) == ("M\u00dcLLER", "J\u00d6RG")


# ---------------------------------------------------------------- once and only once


def test_a_repeated_control_id_is_answered_with_the_same_ack_and_applied_once(port: int) -> None:
    first = exchange(port, adt("DUP-ADT"), orm("DUP-ORM", placer="PLC-DUP"))
    again = exchange(port, adt("DUP-ADT"), orm("DUP-ORM", placer="PLC-DUP"))
    assert again == first  # byte for byte, the ACK's own control id included
    assert Patient.objects.count() == 1
    assert Order.objects.count() == 1
    assert AuditEvent.objects.filter(object_type="ris.order", action="create").count() == 1
    repeats = InboundMessage.objects.filter(status=InboundMessage.Status.DUPLICATE)
    assert sorted(repeats.values_list("control_id", flat=True)) == ["DUP-ADT", "DUP-ORM"]
    assert all(r.duplicate_of is not None for r in repeats)


def test_the_same_control_id_from_another_sender_is_another_message(port: int) -> None:
    replies = exchange(
        port,
        adt("SAME-ID", identifiers="P-A^^^HOSP^MR", app="HIS"),
        adt("SAME-ID", identifiers="P-B^^^HOSP^MR", app="LAB"),
    )
    assert [ack_code(r) for r in replies] == ["AA", "AA"]
    assert Patient.objects.count() == 2


def test_concurrent_connections_each_apply_their_messages(port: int) -> None:
    connections, per_connection = 4, 6
    errors: list[BaseException] = []
    barrier = threading.Barrier(connections, timeout=DEADLINE)

    def client(number: int) -> None:
        try:
            barrier.wait()
            messages = []
            for index in range(per_connection):
                ident = f"C{number}-{index}"
                messages += [
                    adt(f"ADT-{ident}", identifiers=f"{ident}^^^HOSP^MR"),
                    orm(f"ORM-{ident}", placer=f"PLC-{ident}", identifiers=f"{ident}^^^HOSP^MR"),
                ]
            replies = exchange(port, *messages)
            assert [ack_code(r) for r in replies] == ["AA"] * len(messages), replies
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert not errors, errors
    assert Patient.objects.count() == connections * per_connection
    assert Order.objects.count() == connections * per_connection
    assert (
        len(set(Order.objects.values_list("accession_number", flat=True))) == Order.objects.count()
    )


def test_concurrent_messages_for_one_new_patient_make_one_patient(port: int) -> None:
    count = 4
    barrier = threading.Barrier(count, timeout=DEADLINE)
    replies: list[str] = []

    def client(number: int) -> None:
        with connect(port) as sock:
            barrier.wait()
            sock.sendall(encode_frame(orm(f"ORM-{number}", placer=f"PLC-{number}")))
            replies.extend(receive(sock, 1))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert sorted(ack_code(r) for r in replies) == ["AA"] * count
    assert Patient.objects.count() == 1
    assert Order.objects.count() == count


# ---------------------------------------------------------------- failures inside the RIS


def test_an_internal_failure_is_kept_and_applied_when_sent_again(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = inbound.HANDLERS[("ADT", "A04")]

    def broken(message: Any, ctx: Any) -> str:
        raise RuntimeError("a bug")

    monkeypatch.setitem(inbound.HANDLERS, ("ADT", "A04"), broken)
    [reply] = exchange(port, adt("FAIL-1"))
    assert fields(reply, "MSA")[1] == ack.APPLICATION_ERROR
    assert fields(reply, "ERR")[3].startswith(ack.APPLICATION_INTERNAL_ERROR)
    logged = InboundMessage.objects.get()
    assert logged.status == InboundMessage.Status.FAILED
    assert "RuntimeError: a bug" in logged.error
    assert Patient.objects.count() == 0

    # The bug is fixed; the sender, told AE, sends the message again: now it is applied.
    monkeypatch.setitem(inbound.HANDLERS, ("ADT", "A04"), real)
    [reply] = exchange(port, adt("FAIL-1"))
    assert ack_code(reply) == "AA"
    logged.refresh_from_db()
    assert (logged.status, logged.attempts) == ("accepted", 2)
    assert Patient.objects.count() == 1


def test_a_write_that_fails_at_every_attempt_is_kept_as_failed(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows sent with the COMMIT fail there; the last attempt writes each at once, so the
    message still meets its error inside the RIS and is stored, answered AE, not applied."""
    [reply] = exchange(port, adt("HELD-1", identifiers="HELD-1^^^HOSP^MR"))
    assert ack_code(reply) == "AA"
    before = snapshot()
    # Blind to the holder: each attempt registers a new patient whose identifier is taken.
    monkeypatch.setattr(inbound, "_holders", lambda identifiers: {})
    monkeypatch.setattr(services, "_plan_identifiers", _blind_plan(services._plan_identifiers))
    [reply] = exchange(port, adt("HELD-2", identifiers="HELD-1^^^HOSP^MR", name="OTHER^ONE"))
    assert fields(reply, "MSA")[1] == ack.APPLICATION_ERROR
    logged = InboundMessage.objects.get(control_id="HELD-2")
    assert logged.status == InboundMessage.Status.FAILED
    assert "IntegrityError" in logged.error
    assert snapshot() == before


def _blind_plan(real: Any) -> Any:
    def plan(patient_pk: int | None, identifiers: Any) -> Any:
        found = real(patient_pk, [])  # the issuers are not looked up: all are new
        found.wanted = {(i.issuer, i.value): i for i in identifiers}
        found.issuers = {
            issuer.namespace_id: issuer
            for issuer in AssigningAuthority.objects.filter(
                namespace_id__in=[i.issuer for i in identifiers]
            )
        }
        return found

    return plan


def test_a_lost_connection_mid_exchange_leaves_the_listener_serving(port: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(encode_frame(adt("GONE-1", identifiers="GONE-1^^^HOSP^MR")))
    sock.close()  # without reading the ACK
    wait_until(
        lambda: InboundMessage.objects.filter(control_id="GONE-1", status="accepted").first(),
        what="the message sent before the close to be applied",
    )
    [reply] = exchange(port, adt("NEXT-1", identifiers="NEXT-1^^^HOSP^MR"))
    assert ack_code(reply) == "AA"


def test_a_new_patient_and_its_order_take_a_fixed_number_of_round_trips(
    settings: Any, django_assert_max_num_queries: Any
) -> None:
    """The listener's rate is bounded by its round trips to the database: keep them few.

    ADT: begin, control id, PID-3 holders, issuers and identifiers, patient, identifiers,
    audit, message row, commit. ORM: the same start, then procedure, placer number, the two
    counters, accession check, order, requested procedure, step, audit, row, commit.
    """
    factories.procedure("CTHEAD", "CT")
    # The issuers are known already (the first message from a sender creates them).
    assert (
        ack_code(
            inbound.receive(adt("RT-0", identifiers="RT-0^^^HOSP^MR~RT-0^^^NATION^NI")).decode()
        )
        == "AA"
    )
    two = "RT-1^^^HOSP^MR~RT-N^^^NATION^NI"
    with django_assert_max_num_queries(9):
        assert ack_code(inbound.receive(adt("RT-ADT", identifiers=two)).decode()) == "AA"
    with django_assert_max_num_queries(13):
        reply = inbound.receive(orm("RT-ORM", placer="PLC-RT", identifiers=two))
        assert ack_code(reply.decode()) == "AA"
    assert Order.objects.get(placer_order_number="PLC-RT").patient == patient_with("RT-N", "NATION")


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the times psycopg waits for the server's answer (one round trip each): a
    statement on its own, or the end of a pipeline (core.db sends statements together in
    one)."""
    if connection.vendor != "postgresql":
        pytest.skip("counts psycopg's round trips")
    import psycopg._cursor_base
    import psycopg._pipeline_base
    import psycopg.generators

    count = [0]
    original = psycopg.generators.execute
    pipeline_end = psycopg._pipeline_base.BasePipeline._exit_gen

    def execute(pgconn: Any) -> Any:
        count[0] += 1
        return (yield from original(pgconn))

    def exit_gen(pipeline: Any) -> Any:
        count[0] += 1
        return (yield from pipeline_end(pipeline))

    monkeypatch.setattr(psycopg._cursor_base, "execute", execute)
    monkeypatch.setattr(psycopg.generators, "execute", execute)
    monkeypatch.setattr(psycopg._pipeline_base.BasePipeline, "_exit_gen", exit_gen)
    return count


def test_a_new_patient_and_its_order_take_few_round_trips(round_trips: list[int]) -> None:
    """The first lookups go with the BEGIN, and the rows no one reads back with the COMMIT.

    ADT: begin, control id, PID-3 holders, issuers and identifiers (read ahead); patient;
    identifiers, audit event, message row and commit. ORM: begin, control id, holders,
    procedure and placer number (read ahead); counters; accession check; order and requested
    procedure (one statement); step, audit event, message row and commit.
    """
    factories.procedure("CTHEAD", "CT")
    for number in range(4):  # psycopg prepares a statement on its third run: count after
        two = f"RT2-{number}^^^HOSP^MR~RT2-{number}^^^NATION^NI"
        round_trips[0] = 0
        assert ack_code(inbound.receive(adt(f"RT2-A{number}", identifiers=two)).decode()) == "AA"
        adt_trips = round_trips[0]
        round_trips[0] = 0
        reply = inbound.receive(orm(f"RT2-O{number}", placer=f"PLC-RT2-{number}", identifiers=two))
        assert ack_code(reply.decode()) == "AA"
        orm_trips = round_trips[0]
    assert (adt_trips, orm_trips) == (3, 5)
    order = Order.objects.get(placer_order_number="PLC-RT2-3")
    # All of it committed: another connection sees the rows that went with the COMMIT.
    other = connection.copy()
    try:
        with other.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM core_auditevent WHERE object_type = 'ris.order' "
                "AND object_id = %s",
                [str(order.pk)],
            )
            assert cursor.fetchone() == (1,)
            cursor.execute(
                "SELECT status FROM hl7_inboundmessage WHERE control_id = %s", ["RT2-O3"]
            )
            assert cursor.fetchone() == ("accepted",)
    finally:
        other.close()
