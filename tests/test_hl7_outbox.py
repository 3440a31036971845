"""Outbound HL7: the builders, the outbox written with the change, delivery until AA."""

from __future__ import annotations

import datetime as dt
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import connection, transaction
from django.utils import timezone
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message, parse_segment

from config.celery import app as celery_app
from core.listeners import BeatStandIn
from ris import services
from ris.hl7 import ack, builders, er7, inbound, outbox, tasks
from ris.hl7.models import Destination, OutboundMessage
from ris.hl7.parsing import Identifier
from ris.hl7.server import BEAT_TASK_PREFIXES
from ris.models import Order
from tests import factories
from tests.celery_worker import celery_worker
from tests.hl7util import MLLPReceiver, Received, adt
from tests.netutil import DEADLINE, wait_until

AT = dt.datetime(2025, 3, 1, 10, 0, tzinfo=dt.UTC)

PATIENT = builders.PatientIdentity(
    identifiers=[Identifier("P-1", "HOSP", "MR"), Identifier("N-9", "NATION", "NI")],
    family_name="O'TESTPERSON",
    given_name="ANNE",
    birth_date=dt.date(1980, 1, 2),
    sex="F",
    address="1 Main St\n12345 Springfield",
    phone="555-0100",
    email="anne@example.org",
)
ORDER = builders.OrderIdentity(
    placer_order_number="PLC-1",
    accession_number="A250301001",
    procedure_code="CTHEAD",
    procedure_name="CT head",
    scheduled_start=AT,
    referring_physician=builders.Person("REFERRER", "RITA", "77"),
)
REPORT_TEXT = "FINDINGS:\nA | b ^ c ~ d \\ e & f\n\nIMPRESSION:\nNo acute finding."
CHARGE = builders.ChargeLine(
    transaction_id="T-1",
    performed_at=AT,
    procedure_code="CTHEAD",
    procedure_name="CT head",
    quantity=1,
    amount=Decimal("250.00"),
    unit_amount=Decimal("250.00"),
    currency="EUR",
    accession_number="A250301001",
    cpt_code="70450",
    modifiers=("26", "59"),
)


def envelope(version: str = "2.5.1") -> builders.Envelope:
    return builders.Envelope("RISPACS", "RADIOLOGY", "EMR", "HOSP", "CTRL-1", AT, version=version)


def all_built(version: str) -> dict[str, str]:
    env = envelope(version)
    report = builders.ReportData(
        PATIENT,
        ORDER,
        builders.RESULT_FINAL,
        REPORT_TEXT,
        AT,
        AT,
        builders.Person("RAY", "R", "r1"),
    )
    return {
        "ORU^R01": builders.oru_r01(report, env),
        "DFT^P03": builders.dft_p03(PATIENT, [CHARGE, CHARGE], env),
        "ORM^O01": builders.orm_status(PATIENT, ORDER, builders.ORDER_IN_PROCESS, env),
        "ADT^A08": builders.adt_a08(PATIENT, env),
        "ADT^A40": builders.adt_a40(PATIENT, [Identifier("OLD-7", "HOSP", "MR")], env),
    }


@pytest.fixture
def receiver() -> Iterator[MLLPReceiver]:
    his = MLLPReceiver()
    yield his
    his.close()


def destination(port: int, types: str = "ADT,ORM,ORU,DFT", **fields: Any) -> Destination:
    return Destination.objects.create(
        name=fields.pop("name", f"dest-{port}"),
        host="127.0.0.1",
        port=port,
        message_types=types,
        **fields,
    )


def make_due() -> None:
    """What the clock does between retries, without waiting for it."""
    OutboundMessage.objects.exclude(status="delivered").update(next_attempt_at=timezone.now())


# ---------------------------------------------------------------- builders


@pytest.mark.parametrize("version", ["2.4", "2.5", "2.5.1"])
@pytest.mark.parametrize("message_type", ["ORU^R01", "DFT^P03", "ADT^A08", "ADT^A40"])
def test_built_messages_pass_hl7apy_strict_validation(version: str, message_type: str) -> None:
    text = all_built(version)[message_type]
    message = parse_message(text, find_groups=True, validation_level=VALIDATION_LEVEL.STRICT)
    assert message.validate()
    assert message.msh.msh_9.to_er7().startswith(message_type)
    assert message.msh.msh_12.to_er7() == version


@pytest.mark.parametrize("version", ["2.3", "2.3.1", "2.4", "2.5", "2.5.1"])
def test_every_built_segment_is_valid_for_its_version(version: str) -> None:
    # hl7apy checks whole ORM^O01 messages as if its choice groups were sequences, so
    # ORM (and the older versions' structures) are held to it segment by segment.
    for text in all_built(version).values():
        for raw in text.strip("\r").split("\r"):
            segment = parse_segment(raw, version=version, validation_level=VALIDATION_LEVEL.STRICT)
            # hl7apy's parser drops the space that stands for a blank report line.
            assert segment.to_er7() == raw.replace("|| |", "|||")


def test_report_text_reads_back_line_for_line() -> None:
    message = er7.parse(all_built("2.5.1")["ORU^R01"])
    obr = message.first("OBR")
    assert obr is not None
    assert (obr.value(3), obr.value(4), obr.value(25)) == ("A250301001", "CTHEAD", "F")
    assert (obr.value(32, 1, 1), obr.value(32, 1, 2)) == ("r1", "RAY")
    lines = [obx.value(5) for obx in message.all("OBX")]
    assert lines == [line or " " for line in REPORT_TEXT.split("\n")]
    assert {obx.value(11) for obx in message.all("OBX")} == {"F"}


def test_charges_carry_code_quantity_and_amount() -> None:
    message = er7.parse(all_built("2.5.1")["DFT^P03"])
    ft1 = message.all("FT1")
    assert [f.value(1) for f in ft1] == ["1", "2"]
    first = ft1[0]
    assert (first.value(6), first.value(7), first.value(10)) == ("CG", "CTHEAD", "1")
    assert (first.value(11, 1, 1), first.value(11, 1, 2)) == ("250.00", "EUR")
    assert (first.value(23), first.value(25)) == ("A250301001", "70450")
    assert [first.value(26, 1, rep=rep) for rep in (0, 1)] == ["26", "59"]  # CPT modifiers
    assert "FT1" in all_built("2.3")["DFT^P03"] and "|26^^C4" not in all_built("2.3")["DFT^P03"]


def test_times_go_out_in_local_time_with_the_offset() -> None:
    env = builders.Envelope("R", "F", "H", "H", "C", AT, tz=dt.timezone(dt.timedelta(hours=1)))
    assert er7.parse(builders.adt_a08(PATIENT, env)).msh.value(7) == "20250301110000+0100"


# ---------------------------------------------------------------- written with the change


pytestmark_db = pytest.mark.django_db


@pytestmark_db
def test_oru_from_a_report_row(receiver: MLLPReceiver) -> None:
    from reporting.models import Report

    radiologist = factories_user("rad1", "RAY", "RADIOLOGIST")
    order = factories.order(placer_order_number="PLC-9")
    destination(receiver.port, "ORU")
    report = Report.objects.create(
        order=order,
        status=Report.Status.FINAL,
        findings="Normal brain.",
        impression="No acute finding.",
        signed_by=radiologist,
        signed_at=AT,
    )
    data = outbox.report_data(
        report.order,
        status=builders.RESULT_FINAL,
        text=report.text,
        interpreter=report.signed_by,
        reported_at=report.signed_at,  # type: ignore[arg-type]
    )
    [row] = outbox.enqueue_report(data, patient=order.patient)
    message = er7.parse(row.raw)
    obr = message.first("OBR")
    assert obr is not None
    assert (obr.value(2), obr.value(3)) == ("PLC-9", order.accession_number)
    assert obr.value(32, 1, 2) == "RADIOLOGIST"
    assert [obx.value(5) for obx in message.all("OBX")][:2] == ["FINDINGS:", "Normal brain."]
    pid = message.first("PID")
    assert pid is not None and pid.value(3) == order.patient.identifiers.get().value
    assert (row.message_type, row.status, row.patient_id) == (
        "ORU^R01",
        "pending",
        order.patient_id,
    )
    assert row.order_numbers == order.accession_number


def factories_user(username: str, first: str, last: str) -> Any:
    from django.contrib.auth.models import User

    return User.objects.create_user(username=username, first_name=first, last_name=last)


@pytestmark_db
def test_messages_go_only_to_enabled_destinations_that_want_them() -> None:
    adt_dest = destination(3001, "ADT", name="adt")
    destination(3002, "ORU,DFT", name="results")
    destination(3003, "ADT", name="off", enabled=False)
    patient = factories.patient()
    services.update_patient(patient, {"given_name": "ALEXA"})
    [row] = OutboundMessage.objects.all()
    assert (row.destination, row.message_type) == (adt_dest, "ADT^A08")
    pid = er7.parse(row.raw).first("PID")
    assert pid is not None and pid.value(5, 2) == "ALEXA"


@pytestmark_db
def test_a_merge_tells_the_his_which_identifiers_now_name_the_survivor() -> None:
    destination(3001, "ADT")
    survivor = factories.patient(family="Keptperson")
    merged = factories.patient(family="Goneperson")
    old = [(i.value, i.issuer.namespace_id) for i in merged.identifiers.select_related("issuer")]
    assert old, "the factory gives every patient an identifier"
    services.merge_patients(survivor, merged)
    [row] = OutboundMessage.objects.all()
    assert row.message_type == "ADT^A40" and row.patient == survivor
    message = er7.parse(row.raw)
    pid, mrg = message.first("PID"), message.first("MRG")
    assert pid is not None and mrg is not None
    assert pid.value(5, 1).upper() == "KEPTPERSON"
    prior = [
        (mrg.value(1, 1, rep=rep), mrg.value(1, 4, rep=rep))
        for rep in range(len(mrg.repetitions(1)))
    ]
    assert prior == old


@pytestmark_db
def test_the_outbox_row_rolls_back_with_the_change() -> None:
    destination(3001, "ADT")
    patient = factories.patient()
    with pytest.raises(RuntimeError), transaction.atomic():
        services.update_patient(patient, {"given_name": "ROLLED"})
        assert OutboundMessage.objects.count() == 1
        raise RuntimeError("the change fails after the message was queued")
    assert OutboundMessage.objects.count() == 0


@pytestmark_db
def test_exam_start_completion_and_cancellation_tell_the_placer() -> None:
    destination(3001, "ORM")
    first, second = factories.order(placer_order_number="P-1"), factories.order()
    services.check_in(first)  # arrival is the RIS's own business: no message
    assert OutboundMessage.objects.count() == 0
    step = first.requested_procedures.get().steps.get()
    services.start_exam([step], started_at=timezone.now())
    services.complete_exam([step], ended_at=timezone.now())
    services.cancel_order(second, "patient called off")
    statuses = []
    for row in OutboundMessage.objects.order_by("id"):
        orc = er7.parse(row.raw).first("ORC")
        assert orc is not None
        statuses.append((orc.value(1), orc.value(3), orc.value(5)))
    assert statuses == [
        ("SC", first.accession_number, "IP"),
        ("SC", first.accession_number, "CM"),
        ("SC", second.accession_number, "CA"),
    ]


@pytestmark_db
def test_a_change_made_by_the_his_is_not_echoed_back_to_it(settings: Any) -> None:
    his = destination(3001, "ADT", name="his", receiving_application="HIS")
    emr = destination(3002, "ADT", name="emr", receiving_application="EMR")
    inbound.receive(adt("E-1", "A04", "ECHO-1^^^HOSP^MR", "TESTPERSON^ALEX"))
    assert inbound.receive(adt("E-2", "A08", "ECHO-1^^^HOSP^MR", "TESTPERSON^ALEXIS")).startswith(
        b"MSH"
    )
    assert list(OutboundMessage.objects.values_list("destination", flat=True)) == [emr.pk]
    # The same change from the front desk goes to both.
    services.update_patient(services.find_patient_by_identifier("ECHO-1", "HOSP"), {"phone": "1"})  # type: ignore[arg-type]
    assert OutboundMessage.objects.filter(destination=his).count() == 1


# ---------------------------------------------------------------- delivery


def enqueue_reports(count: int) -> list[OutboundMessage]:
    """Queue COUNT reports, each in its own transaction, as signing would."""
    order = Order.objects.first() or factories.order()
    rows = []
    for number in range(count):
        data = outbox.report_data(
            order, status="F", text=f"report {number}", interpreter=None, reported_at=AT
        )
        rows += outbox.enqueue_report(data, patient=order.patient)
    return rows


@pytestmark_db
def test_receiver_down_then_up_delivers_everything_in_order_exactly_once(
    eager: None, receiver: MLLPReceiver, django_capture_on_commit_callbacks: Any
) -> None:
    destination(receiver.port, "ORU")
    with django_capture_on_commit_callbacks(execute=True):
        rows = enqueue_reports(5)
    # Down: the head was tried and waits for its retry; nothing behind it was sent.
    assert receiver.received == []
    statuses = list(OutboundMessage.objects.order_by("id").values_list("status", "attempts"))
    assert statuses == [("retrying", 1)] + [("pending", 0)] * 4
    head = OutboundMessage.objects.order_by("id").first()
    assert head is not None and "ConnectionRefusedError" in head.last_error
    assert head.next_attempt_at > timezone.now()

    assert outbox.sweep() == []  # nothing is due yet: the sweep leaves it waiting
    receiver.up()
    make_due()
    with django_capture_on_commit_callbacks(execute=True):
        assert outbox.sweep() == [rows[0].destination_id]
    assert receiver.control_ids() == [row.control_id for row in rows]
    assert set(OutboundMessage.objects.values_list("status", flat=True)) == {"delivered"}
    assert all(m.ack_code == "AA" and m.delivered_at for m in OutboundMessage.objects.all())
    # Nothing is sent twice.
    make_due()
    outbox.sweep()
    assert len(receiver.received) == 5


@pytestmark_db
def test_an_ae_is_retried_and_holds_back_what_follows(eager: None) -> None:
    answers = iter(["AE", "AR", "AA", "AA"])
    his = MLLPReceiver(answer=lambda received: next(answers))
    his.up()
    try:
        destination(his.port, "ORU")
        first, second = enqueue_reports(2)
        report = outbox.deliver(first.destination_id)
        assert (report.delivered, report.failed) == (0, True)
        first.refresh_from_db()
        assert (first.status, first.ack_code, first.attempts) == ("retrying", "AE", 1)
        assert "test says no" in first.last_error
        make_due()
        outbox.deliver(first.destination_id)
        first.refresh_from_db()
        assert (first.ack_code, first.attempts) == ("AR", 2)
        second.refresh_from_db()
        assert second.status == "pending"
        make_due()
        assert outbox.deliver(first.destination_id).delivered == 2
        assert his.control_ids() == [first.control_id] * 3 + [second.control_id]
    finally:
        his.close()


@pytestmark_db
def test_an_ack_for_another_message_is_no_delivery(eager: None) -> None:
    def wrong(received: Received) -> str:
        received.control_id = "SOMETHING-ELSE"
        return "AA"

    his = MLLPReceiver()
    his.reply = lambda frame: ack.build_ack(  # type: ignore[method-assign]
        ack.parse_header("MSH|^~\\&|A|B|C|D|2025||ORU^R01|OTHER|P|2.5.1\r"),
        "AA",
        "",
        sending_application="HIS",
        sending_facility="H",
    ).encode()
    his.up()
    try:
        destination(his.port, "ORU")
        [row] = enqueue_reports(1)
        outbox.deliver(row.destination_id)
        row.refresh_from_db()
        assert row.status == "retrying"
        assert "answers control id 'OTHER'" in row.last_error
    finally:
        his.close()


@pytestmark_db
def test_no_answer_is_a_failed_attempt(eager: None, settings: Any) -> None:
    settings.HL7_ACK_TIMEOUT = 1
    silent = MLLPReceiver()
    silent.reply = lambda frame: None  # type: ignore[method-assign]
    silent.up()
    try:
        destination(silent.port, "ORU")
        [row] = enqueue_reports(1)
        outbox.deliver(row.destination_id)
        row.refresh_from_db()
        assert row.status == "retrying"
        assert "timed out" in row.last_error.lower() or "TimeoutError" in row.last_error
    finally:
        silent.close()


@pytestmark_db
def test_a_disabled_destination_holds_its_messages(eager: None, receiver: MLLPReceiver) -> None:
    receiver.up()
    dest = destination(receiver.port, "ORU")
    [row] = enqueue_reports(1)
    Destination.objects.filter(pk=dest.pk).update(enabled=False)
    assert outbox.sweep() == []
    assert outbox.deliver(dest.pk).delivered == 0
    Destination.objects.filter(pk=dest.pk).update(enabled=True)
    assert outbox.deliver(dest.pk).delivered == 1
    assert receiver.control_ids() == [row.control_id]


@pytestmark_db
def test_retry_now_sends_at_once(
    eager: None, receiver: MLLPReceiver, django_capture_on_commit_callbacks: Any
) -> None:
    destination(receiver.port, "ORU")
    first, second = enqueue_reports(2)
    outbox.deliver(first.destination_id)  # refused: the receiver is down
    receiver.up()
    with django_capture_on_commit_callbacks(execute=True):
        outbox.retry_now(second)  # the one behind it makes the head due too
    assert receiver.control_ids() == [first.control_id, second.control_id]


def test_retry_delay_doubles_up_to_the_maximum(settings: Any) -> None:
    settings.HL7_RETRY_DELAY = 10
    settings.HL7_MAX_RETRY_DELAY = 600
    delays = [outbox.retry_delay(n).total_seconds() for n in (1, 2, 3, 4, 6, 7, 50)]
    assert delays == [10, 20, 40, 80, 320, 600, 600]


@pytest.mark.django_db(transaction=True)
def test_two_senders_at_once_send_each_message_once(eager: None, receiver: MLLPReceiver) -> None:
    if connection.vendor == "sqlite":
        pytest.skip("parallel senders share the lease through PostgreSQL row updates")
    receiver.up()
    destination(receiver.port, "ORU")
    rows = enqueue_reports(20)
    barrier = threading.Barrier(3, timeout=DEADLINE)

    def sender() -> None:
        barrier.wait()
        for _ in range(5):
            outbox.deliver(rows[0].destination_id)
        connection.close()

    threads = [threading.Thread(target=sender) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    outbox.deliver(rows[0].destination_id)  # whatever a lost race left behind
    assert receiver.control_ids() == [row.control_id for row in rows]


@pytest.mark.django_db(transaction=True)
def test_the_listener_sweeps_the_outbox_when_there_is_no_beat(
    eager: None, receiver: MLLPReceiver
) -> None:
    destination(receiver.port, "ORU")
    rows = enqueue_reports(3)
    receiver.up()
    sweeper = BeatStandIn(BEAT_TASK_PREFIXES, interval=0.05)
    sweeper.start()
    try:
        wait_until(
            lambda: len(receiver.received) == 3 or None, what="the sweeper to deliver the outbox"
        )
    finally:
        sweeper.stop()
    assert receiver.control_ids() == [row.control_id for row in rows]


# ---------------------------------------------------------------- a real worker


@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_delivers_after_the_receiver_comes_back(
    settings: Any, receiver: MLLPReceiver, tmp_path: Path
) -> None:
    if not django_settings.CELERY_BROKER_URL:
        pytest.skip("needs CELERY_BROKER_URL (CI sets it to the local Redis)")
    if connection.vendor == "sqlite":
        pytest.skip("the worker process shares the test database only on PostgreSQL")
    assert not celery_app.conf.task_always_eager, "a test left Celery in eager mode"
    queue = f"test-hl7-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "worker.log"
    settings.HL7_TASK_QUEUE = queue
    settings.HL7_RETRY_DELAY = 1
    worker_env = {
        "HL7_TASK_QUEUE": queue,
        "HL7_RETRY_DELAY": "1",
        "HL7_MAX_RETRY_DELAY": "2",
        "HL7_CONNECT_TIMEOUT": "2",
        "HL7_ACK_TIMEOUT": "5",
    }
    with celery_worker(queue, log, **worker_env) as worker:
        _deliver_after_receiver_comes_back(worker, log, queue, receiver)


def _deliver_after_receiver_comes_back(
    worker: subprocess.Popen[str], log: Path, queue: str, receiver: MLLPReceiver
) -> None:
    def alive() -> None:
        assert worker.poll() is None, f"the worker died:\n{log.read_text()[-3000:]}"

    destination(receiver.port, "ORU")
    rows = enqueue_reports(5)  # each commit hands a delivery to the worker

    def tried() -> bool | None:
        alive()
        head = OutboundMessage.objects.order_by("id").first()
        return True if head is not None and head.attempts > 0 else None

    wait_until(tried, timeout=60, what="the worker to try the receiver while it is down")
    assert receiver.received == []
    receiver.up()  # the worker's own retry, a second later, finds it
    deadline = time.monotonic() + 60
    while OutboundMessage.objects.exclude(status="delivered").exists():
        alive()
        assert time.monotonic() < deadline, (
            f"the worker did not deliver within 60 s:\n{log.read_text()[-3000:]}"
        )
        time.sleep(0.2)  # a poll interval, not a wait for something to happen
    # The beat's sweep finds nothing left to send.
    tasks.sweep_outbox.apply_async(queue=queue)
    assert receiver.control_ids() == [row.control_id for row in rows]
