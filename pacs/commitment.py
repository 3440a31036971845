"""Storage Commitment Push Model as SCP (PS3.4 Annex J): record the request, report the result.

A node asks us, with an N-ACTION, to take responsibility for instances it sent. The
request is recorded (pacs.models.StorageCommitment) and answered at once; the result
follows as an N-EVENT-REPORT on a new association from our AE to the node's host and
port (PS3.4 J.3.3.1.2: an SCP shall be able to send it on a different association).
The standard also allows the request's own association, but pynetdicom cannot safely
send on an association from a thread other than the one serving it, and the node may
have released it by then; a new association also survives a restart of this process.

An instance is committed when its index row exists and its file is there with the
indexed size. Sending is a Celery task (pacs.tasks) that retries with growing delays
while the node cannot be reached; beat's sweep picks up whatever is left unsent.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connections, transaction
from django.db.models import Q
from django.utils import timezone
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import N_ACTION_RSP
from pynetdicom.events import Event
from pynetdicom.status import STATUS_SUCCESS as CATEGORY_SUCCESS
from pynetdicom.status import STATUS_WARNING as CATEGORY_WARNING
from pynetdicom.status import code_to_category

from core.dicom_server import ACSE_TIMEOUT, CONNECTION_TIMEOUT, DIMSE_TIMEOUT, NETWORK_TIMEOUT
from pacs import journal
from pacs.models import DicomNode, Instance, StorageCommitment
from pacs.storage import FileStorage, default_storage

logger = logging.getLogger(__name__)

# PS3.4 J.3.4, J.3.5: the SOP class and its one well-known SOP instance.
STORAGE_COMMITMENT_PUSH_MODEL = UID("1.2.840.10008.1.20.1")
STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE = UID("1.2.840.10008.1.20.1.1")
# PS3.4 Table J.3-1 and J.3-2.
ACTION_REQUEST_STORAGE_COMMITMENT = 1
EVENT_ALL_COMMITTED = 1
EVENT_FAILURES_EXIST = 2
# PS3.3 C.14.1.1: Failure Reason (0008,1197) of an instance in Failed SOP Sequence.
FAILURE_PROCESSING_FAILURE = 0x0110  # the index row is there, its file is not (or not whole)
FAILURE_NO_SUCH_OBJECT_INSTANCE = 0x0112
FAILURE_CLASS_INSTANCE_CONFLICT = 0x0119

# Delivery: the delay after the first failed attempt doubles up to the maximum; after
# MAX_ATTEMPTS the record is marked failed (about a day of trying with these values).
RETRY_DELAY = 30.0
MAX_RETRY_DELAY = 3600.0
MAX_ATTEMPTS = 30
# Seconds a sender holds a record: longer than one association can take.
CLAIM_SECONDS = 2 * (CONNECTION_TIMEOUT + ACSE_TIMEOUT + DIMSE_TIMEOUT) + 30
# Seconds to wait for the intake journal to index what this process has acknowledged.
JOURNAL_FLUSH_TIMEOUT = 10.0
# Reports the beat's sweep hands out per run; the next run takes the rest.
SWEEP_BATCH = 500
# Instance UIDs looked up per query (SQLite limits the parameters of one statement).
LOOKUP_BATCH = 500

Reference = tuple[str, str]  # (SOP Class UID, SOP Instance UID)


class RequestError(ValueError):
    """The N-ACTION cannot be accepted; `comment` is fit for an ErrorComment (64 characters)."""

    def __init__(self, comment: str) -> None:
        super().__init__(comment)
        self.comment = comment[:64]


@dataclass(frozen=True)
class CommitmentRequest:
    transaction_uid: str
    references: list[Reference]


def _uid(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    return str(value).strip() if value is not None else ""


def read_request(action_information: Dataset | None) -> CommitmentRequest:
    """Read the Action Information of a Request Storage Commitment (PS3.4 Table J.3-1)."""
    if action_information is None:
        raise RequestError("no Action Information")
    transaction_uid = _uid(action_information, "TransactionUID")
    if not transaction_uid:
        raise RequestError("TransactionUID (0008,1195) is missing")
    if not UID(transaction_uid).is_valid:
        raise RequestError("TransactionUID (0008,1195) is not a valid UID")
    sequence = action_information.get("ReferencedSOPSequence")
    if not sequence:
        raise RequestError("ReferencedSOPSequence (0008,1199) is missing or empty")
    references: list[Reference] = []
    seen: set[str] = set()
    for number, item in enumerate(sequence, start=1):
        sop_class = _uid(item, "ReferencedSOPClassUID")
        sop_instance = _uid(item, "ReferencedSOPInstanceUID")
        if not sop_class or not sop_instance:
            raise RequestError(f"ReferencedSOPSequence item {number}: a UID is missing")
        if not (UID(sop_class).is_valid and UID(sop_instance).is_valid):
            raise RequestError(f"ReferencedSOPSequence item {number}: not a valid UID")
        if sop_instance in seen:  # PS3.4 J.3.2.1.1.3: referenced only once
            raise RequestError(f"ReferencedSOPSequence item {number}: referenced twice")
        seen.add(sop_instance)
        references.append((sop_class, sop_instance))
    return CommitmentRequest(transaction_uid, references)


# -- Recording the request ----------------------------------------------------------------


def record_request(
    request: CommitmentRequest,
    *,
    calling_ae_title: str,
    called_ae_title: str,
    source_address: str = "",
    defer: Callable[[Callable[[], None]], None] | None = None,
) -> StorageCommitment:
    """Record REQUEST durably and queue its result once the record has committed.

    The same request again (its response lost) while its result is unsent is the same
    record; a Transaction UID used before for anything else is refused (PS3.4 J.3.2.1.2).
    DEFER, if given, is handed the start of an in-process delivery (see queue_report).
    """
    # The intake journal acknowledges C-STOREs a moment before their index rows commit:
    # let them land, so that the result (maybe assessed in a worker process) sees them.
    if not journal.flush(JOURNAL_FLUSH_TIMEOUT):
        logger.warning("intake journal not flushed within %ss", JOURNAL_FLUSH_TIMEOUT)
    references = [list(reference) for reference in request.references]
    try:
        with transaction.atomic():
            record = StorageCommitment.objects.create(
                transaction_uid=request.transaction_uid,
                calling_ae_title=calling_ae_title,
                called_ae_title=called_ae_title,
                source_address=source_address[:255],
                references=references,
                next_attempt_at=timezone.now(),
            )
            # robust: a broker that is down must not turn a recorded request into a
            # failure status; the sweep sends it later.
            transaction.on_commit(lambda: queue_report(record.pk, defer=defer), robust=True)
    except IntegrityError:
        existing = StorageCommitment.objects.filter(
            calling_ae_title=calling_ae_title, transaction_uid=request.transaction_uid
        ).first()
        if (
            existing is not None
            and existing.status == StorageCommitment.Status.PENDING
            and existing.references == references
        ):
            return existing
        raise RequestError("TransactionUID was used before") from None
    logger.info(
        "storage commitment %s from %s: %d instance(s)",
        request.transaction_uid,
        calling_ae_title,
        len(references),
    )
    return record


# -- Assessing it ------------------------------------------------------------------------


@dataclass
class Assessment:
    committed: list[Reference] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)  # class, instance, reason

    @property
    def event_type_id(self) -> int:
        return EVENT_FAILURES_EXIST if self.failed else EVENT_ALL_COMMITTED


def _file_intact(storage: FileStorage, relative_path: str, size: int) -> bool:
    try:
        return storage.path(relative_path).stat().st_size == size
    except (OSError, ValueError):
        return False


def assess(references: list[Reference], storage: FileStorage | None = None) -> Assessment:
    """Tell which REFERENCES we hold: index row there, file there with the indexed size."""
    storage = storage or default_storage()
    uids = [sop_instance for _, sop_instance in references]
    stored: dict[str, tuple[str, str, int]] = {}
    for start in range(0, len(uids), LOOKUP_BATCH):
        rows = Instance.objects.filter(
            sop_instance_uid__in=uids[start : start + LOOKUP_BATCH]
        ).values_list("sop_instance_uid", "sop_class_uid", "file_path", "file_size")
        for sop_instance, sop_class, path, size in rows:
            stored[sop_instance] = (sop_class, path, size)
    result = Assessment()
    for sop_class, sop_instance in references:
        row = stored.get(sop_instance)
        if row is None:
            result.failed.append((sop_class, sop_instance, FAILURE_NO_SUCH_OBJECT_INSTANCE))
        elif row[0] != sop_class:
            result.failed.append((sop_class, sop_instance, FAILURE_CLASS_INSTANCE_CONFLICT))
        elif not _file_intact(storage, row[1], row[2]):
            result.failed.append((sop_class, sop_instance, FAILURE_PROCESSING_FAILURE))
        else:
            result.committed.append((sop_class, sop_instance))
    return result


def event_information(record: StorageCommitment, result: Assessment) -> Dataset:
    """The Event Information of the Storage Commitment Result (PS3.4 Table J.3-2)."""
    information = Dataset()
    information.TransactionUID = record.transaction_uid
    if result.committed:
        # J.3.3.1.1.1: all of them can be retrieved from the AE the request was sent to.
        information.RetrieveAETitle = record.called_ae_title
        information.ReferencedSOPSequence = [
            _reference_item(sop_class, sop_instance) for sop_class, sop_instance in result.committed
        ]
    if result.failed:
        failed = []
        for sop_class, sop_instance, reason in result.failed:
            item = _reference_item(sop_class, sop_instance)
            item.FailureReason = reason
            failed.append(item)
        information.FailedSOPSequence = failed
    return information


def _reference_item(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


# -- Sending the result --------------------------------------------------------------------


class NotDelivered(Exception):
    """The node could not be reached, or did not answer: worth another try later."""


class Refused(Exception):
    """The node answered the N-EVENT-REPORT with a failure status."""


def send_event_report(
    node: DicomNode, calling_ae_title: str, event_type_id: int, information: Dataset
) -> None:
    """Send one N-EVENT-REPORT to NODE on a new association, as the SCP of the Push Model.

    We are the association requestor but the SCP of this SOP class, so we propose the
    SCP role only (PS3.4 J.3.3.1.2 note 1, PS3.7 D.3.3.4). A node that accepts the context
    but leaves the role selection unanswered still gets the report, as it is listening for it.
    """
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ACSE_TIMEOUT
    ae.dimse_timeout = DIMSE_TIMEOUT
    ae.network_timeout = NETWORK_TIMEOUT
    ae.connection_timeout = CONNECTION_TIMEOUT
    context = build_context(
        STORAGE_COMMITMENT_PUSH_MODEL, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    )
    role = build_role(STORAGE_COMMITMENT_PUSH_MODEL, scu_role=False, scp_role=True)
    assoc = ae.associate(
        node.host, node.port, contexts=[context], ae_title=node.ae_title, ext_neg=[role]
    )
    if not assoc.is_established:
        if assoc.is_rejected:
            raise NotDelivered(f"{node} rejected the association")
        raise NotDelivered(f"no association with {node}")
    try:
        accepted = [
            cx
            for cx in assoc.accepted_contexts
            if cx.abstract_syntax == STORAGE_COMMITMENT_PUSH_MODEL
        ]
        if not accepted:
            raise NotDelivered(f"{node} did not accept the Storage Commitment Push Model")
        if not accepted[0].as_scp:
            logger.info("%s did not grant us the SCP role; sending the report anyway", node)
        status, _ = assoc.send_n_event_report(
            information,
            event_type_id,
            STORAGE_COMMITMENT_PUSH_MODEL,
            STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE,
        )
    finally:
        if assoc.is_established:
            assoc.release()
    code = getattr(status, "Status", None)
    if code is None:
        raise NotDelivered(f"no answer from {node} to the N-EVENT-REPORT")
    if code_to_category(code) not in (CATEGORY_SUCCESS, CATEGORY_WARNING):
        comment = getattr(status, "ErrorComment", "")
        raise Refused(f"{node} answered 0x{code:04X} {comment}".strip())


def retry_delay(attempts: int) -> float:
    """Seconds to wait after ATTEMPTS failed tries: doubling, up to the maximum."""
    return float(min(RETRY_DELAY * 2 ** min(max(attempts - 1, 0), 20), MAX_RETRY_DELAY))


@dataclass(frozen=True)
class Delivery:
    outcome: str  # a StorageCommitment.Status, or "skipped" when it was not ours to send
    retry_in: float | None = None  # seconds, when the node should be tried again


SKIPPED = "skipped"


def _claim(commitment_id: int) -> bool:
    """Take the record for sending, if it is pending, due, and no other sender holds it."""
    now = timezone.now()
    return bool(
        StorageCommitment.objects.filter(
            pk=commitment_id, status=StorageCommitment.Status.PENDING, next_attempt_at__lte=now
        )
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
        .update(claimed_until=now + dt.timedelta(seconds=CLAIM_SECONDS))
    )


def _finish(record: StorageCommitment, status: str, **fields: Any) -> Delivery:
    StorageCommitment.objects.filter(pk=record.pk).update(
        status=status, claimed_until=None, **fields
    )
    return Delivery(status)


def deliver_report(commitment_id: int) -> Delivery:
    """Assess a recorded request and send its result to the node; note what came of it."""
    if not _claim(commitment_id):
        return Delivery(SKIPPED)
    record = StorageCommitment.objects.get(pk=commitment_id)
    attempts = record.attempts + 1
    node = DicomNode.objects.filter(ae_title=record.calling_ae_title).first()
    if node is None:
        reason = f"{record.calling_ae_title} is no longer a known node"
        logger.warning("storage commitment %s: %s", record.transaction_uid, reason)
        return _finish(
            record, StorageCommitment.Status.FAILED, attempts=attempts, last_error=reason
        )
    result = assess([(str(c), str(i)) for c, i in record.references])
    information = event_information(record, result)
    failures = [list(failure) for failure in result.failed]
    try:
        send_event_report(
            node,
            record.called_ae_title or settings.DICOM_AE_TITLE,
            result.event_type_id,
            information,
        )
    except Refused as exc:
        logger.warning("storage commitment %s: %s", record.transaction_uid, exc)
        return _finish(
            record,
            StorageCommitment.Status.FAILED,
            attempts=attempts,
            event_type_id=result.event_type_id,
            failures=failures,
            last_error=str(exc),
        )
    except Exception as exc:  # not reached, no answer, or unforeseen: counted, tried again
        if not isinstance(exc, NotDelivered | OSError):
            logger.exception("storage commitment %s: sending failed", record.transaction_uid)
        error = str(exc) or type(exc).__name__
        if attempts >= MAX_ATTEMPTS:
            logger.error("storage commitment %s: given up: %s", record.transaction_uid, error)
            return _finish(
                record,
                StorageCommitment.Status.FAILED,
                attempts=attempts,
                last_error=f"given up after {attempts} attempts: {error}",
            )
        delay = retry_delay(attempts)
        StorageCommitment.objects.filter(pk=record.pk).update(
            attempts=attempts,
            next_attempt_at=timezone.now() + dt.timedelta(seconds=delay),
            claimed_until=None,
            last_error=error,
        )
        logger.warning(
            "storage commitment %s: not sent (attempt %d, next in %ds): %s",
            record.transaction_uid,
            attempts,
            delay,
            error,
        )
        return Delivery(StorageCommitment.Status.PENDING, retry_in=delay)
    logger.info(
        "storage commitment %s: result sent to %s (%d committed, %d failed)",
        record.transaction_uid,
        node,
        len(result.committed),
        len(result.failed),
    )
    return _finish(
        record,
        StorageCommitment.Status.SENT,
        attempts=attempts,
        event_type_id=result.event_type_id,
        failures=failures,
        last_error="",
        sent_at=timezone.now(),
    )


# -- Scheduling ------------------------------------------------------------------------------


def queue_report(
    commitment_id: int, *, defer: Callable[[Callable[[], None]], None] | None = None
) -> None:
    """Hand the result of COMMITMENT_ID to a worker; without a broker, to a thread of its own.

    In-process, the task would run inside the N-ACTION handler, before our response goes
    out. So a short-lived thread sends it instead, started by DEFER (run_after_response)
    once the handler has returned. Its one attempt that fails waits for the sweep.
    """
    if not settings.CELERY_TASK_ALWAYS_EAGER:
        from pacs import tasks

        tasks.send_commitment_report.delay(commitment_id)
        return
    thread = threading.Thread(
        target=_deliver_in_thread,
        args=(commitment_id,),
        name=f"commitment-report-{commitment_id}",
        daemon=True,
    )
    if defer is None:
        thread.start()
    else:
        defer(thread.start)


def _deliver_in_thread(commitment_id: int) -> None:
    try:
        deliver_report(commitment_id)
    except Exception:
        logger.exception("storage commitment %s: sending failed", commitment_id)
    finally:
        connections.close_all()  # this thread's own database connection


def run_after_response(assoc: Association, message_id: int, callback: Callable[[], None]) -> None:
    """Run CALLBACK once ASSOC has handed over its N-ACTION-RSP to MESSAGE_ID (or closed).

    EVT_DIMSE_SENT comes after the N-ACTION handler returned, just before the response's
    PDUs are queued for the socket: it orders the start of CALLBACK after the handler,
    not after the bytes. A callback that opens an association to the node is slower than
    the one queued PDU, and the node matches the result by its Transaction UID anyway
    (PS3.4 J.3.2.1.2), on whichever association it comes.
    """
    fired = threading.Lock()

    def fire(event: Event) -> None:
        if event.event is evt.EVT_DIMSE_SENT:
            message = event.message
            if not isinstance(message, N_ACTION_RSP):
                return
            if message.command_set.MessageIDBeingRespondedTo != message_id:
                return
        if not fired.acquire(blocking=False):
            return
        assoc.unbind(evt.EVT_DIMSE_SENT, fire)
        assoc.unbind(evt.EVT_CONN_CLOSE, fire)
        callback()

    assoc.bind(evt.EVT_DIMSE_SENT, fire)
    # Should the response never be sent (the association aborted), the result still goes.
    assoc.bind(evt.EVT_CONN_CLOSE, fire)


def retry_now(commitment_ids: list[int]) -> int:
    """Make the unsent results among COMMITMENT_IDS due now, with every attempt again."""
    now = timezone.now()
    with transaction.atomic():
        due = list(
            StorageCommitment.objects.filter(pk__in=commitment_ids)
            .exclude(status=StorageCommitment.Status.SENT)
            .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
            .values_list("pk", flat=True)
        )
        StorageCommitment.objects.filter(pk__in=due).update(
            status=StorageCommitment.Status.PENDING, attempts=0, next_attempt_at=now
        )
        for commitment_id in due:
            transaction.on_commit(partial(queue_report, commitment_id), robust=True)
    return len(due)


def due_reports() -> list[int]:
    """The pending records whose next attempt is due and that no sender holds."""
    now = timezone.now()
    return list(
        StorageCommitment.objects.filter(
            status=StorageCommitment.Status.PENDING, next_attempt_at__lte=now
        )
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
        .order_by("next_attempt_at", "id")
        .values_list("pk", flat=True)[:SWEEP_BATCH]
    )


def sweep() -> list[int]:
    """Queue every result that is due (lost tasks, retries, leftovers); return their ids."""
    commitment_ids = due_reports()
    for commitment_id in commitment_ids:
        queue_report(commitment_id)
    return commitment_ids
