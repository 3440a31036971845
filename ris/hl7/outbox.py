"""The outbox: outbound HL7 written with the change that causes it, delivered until AA.

`enqueue` runs inside the caller's transaction, so a message exists exactly when its
change committed. Delivery takes one destination at a time under a lease (one sender
per destination keeps the order), sends the oldest undelivered message over MLLP, and
marks it delivered only when the ACK says AA for its control id. Anything else (AE,
AR, no answer, no connection) leaves it at the head of the queue for a retry after a
growing delay; nothing is ever dropped, and nothing behind it overtakes it.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import OuterRef, Q, Subquery
from django.utils import timezone

from ris.hl7 import ack, builders
from ris.hl7.inbound import current_sender
from ris.hl7.mllp import FrameDecoder, encode_frame
from ris.hl7.models import CODECS, Destination, OutboundMessage
from ris.hl7.parsing import Identifier
from ris.models import Order, Patient, PatientIdentifier

logger = logging.getLogger(__name__)

Build = Callable[[builders.Envelope], str]


# ---------------------------------------------------------------- rows to plain data


def patient_identity(patient: Patient) -> builders.PatientIdentity:
    """Return PATIENT as the builders take it; its own identifiers first, then aliases."""
    identifiers = [
        Identifier(i.value, i.issuer.namespace_id, i.type)
        for i in patient.identifiers.select_related("issuer").order_by("is_alias", "id")
    ]
    return builders.PatientIdentity(
        identifiers=identifiers,
        family_name=patient.family_name,
        given_name=patient.given_name,
        middle_name=patient.middle_name,
        name_prefix=patient.name_prefix,
        name_suffix=patient.name_suffix,
        birth_date=patient.birth_date,
        sex=patient.sex,
        address=patient.address,
        phone=patient.phone,
        email=patient.email,
    )


def order_identity(order: Order) -> builders.OrderIdentity:
    requested = order.requested_procedures.select_related("procedure_type").first()
    step = requested.steps.order_by("scheduled_start").first() if requested else None
    procedure = requested.procedure_type if requested else None
    return builders.OrderIdentity(
        placer_order_number=order.placer_order_number,
        accession_number=order.accession_number,
        procedure_code=procedure.code if procedure else "",
        procedure_name=procedure.name if procedure else "",
        scheduled_start=step.scheduled_start if step else None,
        referring_physician=builders.Person.from_dicom_name(order.referring_physician_name),
        priority=order.priority,
    )


def person(user: User | None) -> builders.Person | None:
    """Return USER as an HL7 clinician: the username is the id."""
    if user is None:
        return None
    return builders.Person(
        family_name=user.last_name or user.get_username(),
        given_name=user.first_name,
        id=user.get_username(),
    )


def report_data(
    order: Order,
    *,
    status: str,
    text: str,
    interpreter: User | None,
    reported_at: dt.datetime,
    observed_at: dt.datetime | None = None,
) -> builders.ReportData:
    """Return the ReportData of a report on ORDER, for `enqueue_report`."""
    return builders.ReportData(
        patient=patient_identity(order.patient),
        order=order_identity(order),
        status=status,
        text=text,
        observed_at=observed_at,
        reported_at=reported_at,
        interpreter=person(interpreter),
    )


# ---------------------------------------------------------------- writing to the outbox


def _envelope(destination: Destination) -> builders.Envelope:
    return builders.Envelope(
        sending_application=settings.HL7_SENDING_APPLICATION,
        sending_facility=settings.HL7_SENDING_FACILITY,
        receiving_application=destination.receiving_application,
        receiving_facility=destination.receiving_facility,
        control_id=ack.new_control_id(),
        created_at=timezone.now(),
        tz=timezone.get_default_timezone(),
        version=settings.HL7_OUTBOUND_VERSION,
        character_set=destination.character_set,
    )


def destinations_for(message_code: str) -> list[Destination]:
    """Return the enabled destinations that want MESSAGE_CODE, less the one being heard.

    A change made by an inbound message is not echoed back to the system that sent it.
    """
    sender = current_sender.get()
    return [
        destination
        for destination in Destination.objects.filter(enabled=True)
        if destination.wants(message_code)
        and not (sender and destination.receiving_application == sender)
    ]


@transaction.atomic
def enqueue(
    message_type: str,
    build: Build,
    *,
    patient: Patient | None = None,
    order_numbers: Iterable[str] = (),
    destinations: Sequence[Destination] | None = None,
) -> list[OutboundMessage]:
    """Write one message of MESSAGE_TYPE ("ORU^R01") for each destination that wants it."""
    code = message_type.split("^")[0]
    targets = destinations_for(code) if destinations is None else destinations
    rows = []
    for destination in targets:
        envelope = _envelope(destination)
        rows.append(
            OutboundMessage.objects.create(
                destination=destination,
                message_type=message_type,
                control_id=envelope.control_id,
                raw=build(envelope),
                patient=patient,
                patient_name=patient.display_name[:200] if patient else "",
                patient_identifiers=" ".join(
                    f"{i.value}^{i.issuer.namespace_id}"
                    for i in patient.identifiers.select_related("issuer")
                )[:255]
                if patient
                else "",
                order_numbers=" ".join(order_numbers)[:255],
                created_at=envelope.created_at,
                next_attempt_at=envelope.created_at,
            )
        )
    if rows:
        ids = sorted({row.destination_id for row in rows})
        transaction.on_commit(lambda: schedule(ids))
    return rows


def enqueue_report(report: builders.ReportData, *, patient: Patient) -> list[OutboundMessage]:
    """Queue the ORU^R01 of REPORT for every destination taking ORU."""
    return enqueue(
        "ORU^R01",
        lambda envelope: builders.oru_r01(report, envelope),
        patient=patient,
        order_numbers=[report.order.accession_number],
    )


def enqueue_charges(
    patient: Patient, charges: Sequence[builders.ChargeLine], *, visit_number: str = ""
) -> list[OutboundMessage]:
    """Queue one DFT^P03 posting CHARGES for every destination taking DFT."""
    identity = patient_identity(patient)
    return enqueue(
        "DFT^P03",
        lambda envelope: builders.dft_p03(identity, charges, envelope, visit_number=visit_number),
        patient=patient,
        order_numbers=sorted({c.accession_number for c in charges if c.accession_number}),
    )


def enqueue_order_status(order: Order, status: str) -> list[OutboundMessage]:
    """Queue the ORM^O01 telling the placer ORDER's status (HL7 table 0038)."""
    targets = destinations_for("ORM")
    if not targets:
        return []
    patient = order.patient
    identity, order_data = patient_identity(patient), order_identity(order)
    return enqueue(
        "ORM^O01",
        lambda envelope: builders.orm_status(identity, order_data, status, envelope),
        patient=patient,
        order_numbers=[order.accession_number],
        destinations=targets,
    )


def enqueue_patient_update(patient: Patient) -> list[OutboundMessage]:
    """Queue the ADT^A08 carrying PATIENT's demographics."""
    targets = destinations_for("ADT")
    if not targets:
        return []
    identity = patient_identity(patient)
    return enqueue(
        "ADT^A08",
        lambda envelope: builders.adt_a08(identity, envelope),
        patient=patient,
        destinations=targets,
    )


def enqueue_patient_merge(
    survivor: Patient, merged_identifiers: Sequence[PatientIdentifier]
) -> list[OutboundMessage]:
    """Queue the ADT^A40 telling that MERGED_IDENTIFIERS now name SURVIVOR."""
    targets = destinations_for("ADT")
    if not targets:
        return []
    identity = patient_identity(survivor)
    prior = [Identifier(i.value, i.issuer.namespace_id, i.type) for i in merged_identifiers]
    return enqueue(
        "ADT^A40",
        lambda envelope: builders.adt_a40(identity, prior, envelope),
        patient=survivor,
        destinations=targets,
    )


# ---------------------------------------------------------------- delivery


def schedule(destination_ids: Iterable[int], *, countdown: float | None = None) -> None:
    """Ask the worker to deliver to DESTINATION_IDS (in-process without a broker)."""
    from ris.hl7 import tasks

    for destination_id in destination_ids:
        if settings.CELERY_TASK_ALWAYS_EAGER:
            if countdown is None:  # a retry waits for the sweep, not for a loop here
                tasks.deliver_outbox.delay(destination_id)
            continue
        tasks.deliver_outbox.apply_async(
            (destination_id,), countdown=countdown, queue=settings.HL7_TASK_QUEUE or None
        )


def retry_delay(attempts: int) -> dt.timedelta:
    """Return how long to wait after ATTEMPTS failed tries: doubling, up to the maximum."""
    seconds = settings.HL7_RETRY_DELAY * 2 ** min(max(attempts - 1, 0), 20)
    return dt.timedelta(seconds=min(seconds, settings.HL7_MAX_RETRY_DELAY))


def _lease_seconds() -> float:
    # Longer than one send can take, so a live sender never loses it in mid-message.
    return float(2 * (settings.HL7_CONNECT_TIMEOUT + settings.HL7_ACK_TIMEOUT) + 30)


def _claim(destination_id: int, owner: str) -> bool:
    """Take the lease on the destination; False if another sender holds it."""
    now = timezone.now()
    return bool(
        Destination.objects.filter(pk=destination_id)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now) | Q(lease_owner=owner))
        .update(lease_owner=owner, lease_until=now + dt.timedelta(seconds=_lease_seconds()))
    )


def _release(destination_id: int, owner: str) -> None:
    Destination.objects.filter(pk=destination_id, lease_owner=owner).update(
        lease_owner="", lease_until=None
    )


class DeliveryError(Exception):
    """The message was not acknowledged with AA."""

    def __init__(self, text: str, *, ack_code: str = "", reply: str = "") -> None:
        super().__init__(text)
        self.text = text
        self.ack_code = ack_code
        self.reply = reply


class MLLPClient:
    """One connection to a destination: send a frame, read the ACK that answers it."""

    def __init__(self, host: str, port: int, *, connect_timeout: float, ack_timeout: float):
        self.host, self.port = host, port
        self.connect_timeout, self.ack_timeout = connect_timeout, ack_timeout
        self._sock: socket.socket | None = None
        self._decoder = FrameDecoder(peer=f"{host}:{port}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._decoder = FrameDecoder(peer=f"{self.host}:{self.port}")

    def exchange(self, payload: bytes) -> bytes:
        """Send PAYLOAD in one frame; return the frame that comes back."""
        if self._sock is None:
            self._sock = socket.create_connection(
                (self.host, self.port), timeout=self.connect_timeout
            )
        sock = self._sock
        sock.settimeout(self.ack_timeout)
        sock.sendall(encode_frame(payload))
        deadline = time.monotonic() + self.ack_timeout
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the destination closed the connection without an ACK")
            frames = self._decoder.feed(data)
            if frames:
                return frames[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no ACK within {self.ack_timeout:g} s")


def _check_ack(reply: bytes, message: OutboundMessage) -> str:
    """Return the ACK's text when it is AA for MESSAGE; raise DeliveryError otherwise."""
    text = reply.decode("latin-1")
    segments = ack.split_segments(text)
    msa = next((s for s in segments if s.startswith("MSA")), None)
    if msa is None:
        raise DeliveryError("the answer has no MSA segment", reply=text)
    fields = msa.split(msa[3]) if len(msa) > 3 else []
    code = fields[1] if len(fields) > 1 else ""
    control_id = fields[2] if len(fields) > 2 else ""
    # CA (commit accept, enhanced mode) is not the application's AA: not yet applied.
    if control_id != message.control_id:
        raise DeliveryError(
            f"the ACK answers control id {control_id!r}, not {message.control_id!r}",
            ack_code=code,
            reply=text,
        )
    if code != ack.APPLICATION_ACCEPT:
        detail = fields[3] if len(fields) > 3 else ""
        raise DeliveryError(
            f"answered {code or '(no code)'}: {detail}".rstrip(": "), ack_code=code, reply=text
        )
    return text


@dataclass
class DeliveryReport:
    delivered: int = 0
    failed: bool = False
    waiting_until: dt.datetime | None = None


def deliver(destination_id: int) -> DeliveryReport:
    """Send DESTINATION_ID's due messages in order until one fails or none is left."""
    report = DeliveryReport()
    owner = secrets.token_hex(8)
    if not _claim(destination_id, owner):
        logger.debug("HL7 outbox %s: another sender holds it", destination_id)
        return report
    client: MLLPClient | None = None
    try:
        destination = Destination.objects.get(pk=destination_id)
        if not destination.enabled:
            return report
        client = MLLPClient(
            destination.host,
            destination.port,
            connect_timeout=settings.HL7_CONNECT_TIMEOUT,
            ack_timeout=settings.HL7_ACK_TIMEOUT,
        )
        codec = CODECS.get(destination.character_set, "utf-8")
        while True:
            head = (
                OutboundMessage.objects.filter(destination_id=destination_id)
                .exclude(status=OutboundMessage.Status.DELIVERED)
                .order_by("id")
                .first()
            )
            if head is None:
                break
            if head.next_attempt_at > timezone.now():
                report.waiting_until = head.next_attempt_at
                break
            if not _claim(destination_id, owner):  # renew it; lost means someone else sends
                break
            if not _send(client, head, codec):
                client.close()
                report.failed = True
                break
            report.delivered += 1
    finally:
        if client is not None:
            client.close()
        _release(destination_id, owner)
    if report.failed and report.waiting_until is None:
        due = (
            OutboundMessage.objects.filter(destination_id=destination_id)
            .exclude(status=OutboundMessage.Status.DELIVERED)
            .order_by("id")
            .values_list("next_attempt_at", flat=True)
            .first()
        )
        if due is not None:
            countdown = max((due - timezone.now()).total_seconds(), 0.0)
            schedule([destination_id], countdown=countdown)
    return report


def _send(client: MLLPClient, message: OutboundMessage, codec: str) -> bool:
    """Send MESSAGE and record the answer; True when it was acknowledged with AA."""
    now = timezone.now()
    attempts = message.attempts + 1
    try:
        reply = client.exchange(message.raw.encode(codec, errors="replace"))
        text = _check_ack(reply, message)
    except (OSError, DeliveryError) as exc:
        error = exc.text if isinstance(exc, DeliveryError) else f"{type(exc).__name__}: {exc}"
        delay = retry_delay(attempts)
        OutboundMessage.objects.filter(pk=message.pk).update(
            status=OutboundMessage.Status.RETRYING,
            attempts=attempts,
            last_attempt_at=now,
            next_attempt_at=now + delay,
            last_error=error[:2000],
            ack_code=exc.ack_code if isinstance(exc, DeliveryError) else "",
            ack=exc.reply if isinstance(exc, DeliveryError) else "",
        )
        logger.warning(
            "HL7 outbox: %s %s to destination %s not delivered (attempt %d, next in %ss): %s",
            message.message_type,
            message.control_id,
            message.destination_id,
            attempts,
            int(delay.total_seconds()),
            error,
        )
        return False
    OutboundMessage.objects.filter(pk=message.pk).update(
        status=OutboundMessage.Status.DELIVERED,
        attempts=attempts,
        last_attempt_at=now,
        delivered_at=timezone.now(),
        ack_code=ack.APPLICATION_ACCEPT,
        ack=text,
        last_error="",
    )
    logger.info(
        "HL7 outbox: %s %s delivered to destination %s",
        message.message_type,
        message.control_id,
        message.destination_id,
    )
    return True


def due_destinations() -> list[int]:
    """Return the enabled destinations whose next message (the oldest undelivered) is due."""
    head = (
        OutboundMessage.objects.filter(destination=OuterRef("pk"))
        .exclude(status=OutboundMessage.Status.DELIVERED)
        .order_by("id")
        .values("next_attempt_at")[:1]
    )
    return list(
        Destination.objects.filter(enabled=True)
        .annotate(head_due_at=Subquery(head))
        .filter(head_due_at__lte=timezone.now())
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def sweep() -> list[int]:
    """Hand every destination with something due to a delivery; return their ids."""
    destination_ids = due_destinations()
    schedule(destination_ids)
    return destination_ids


@transaction.atomic
def retry_now(message: OutboundMessage) -> None:
    """Make an undelivered MESSAGE (and what waits before it) due now, and send."""
    # The messages before it go first: they are made due with it.
    updated = (
        OutboundMessage.objects.filter(destination_id=message.destination_id, pk__lte=message.pk)
        .exclude(status=OutboundMessage.Status.DELIVERED)
        .update(next_attempt_at=timezone.now())
    )
    if updated:
        destination_id = message.destination_id
        transaction.on_commit(lambda: schedule([destination_id]))
