"""The audit trail: the one place that writes AuditEvent rows.

Every view and change of patient data by a person, and every security event, goes
through `record`. Objects that belong to a patient say so with an `audit_patient()`
method, so this module needs no knowledge of the other apps' models.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Protocol, TypedDict, Unpack

from django.db import (
    InterfaceError,
    OperationalError,
    close_old_connections,
    models,
)
from django.http import HttpRequest
from django.utils import timezone

from core.db import insert_row, insert_rows_beside
from core.listeners import wait_drained
from core.models import AuditEvent

logger = logging.getLogger(__name__)

Action = AuditEvent.Action
Outcome = AuditEvent.Outcome
Channel = AuditEvent.Channel


class PatientOwned(Protocol):
    def audit_patient(self) -> models.Model | None: ...


def client_address(request: HttpRequest) -> str:
    """Return the peer address of REQUEST (the proxy's own, unless trusted to forward)."""
    return str(request.META.get("REMOTE_ADDR", ""))


def _object_fields(target: models.Model | None) -> dict[str, str]:
    if target is None:
        return {}
    fields = {
        "object_type": target._meta.label_lower,
        "object_id": str(target.pk or ""),
        "object_repr": str(target)[:255],
    }
    patient = target if target._meta.label_lower == "ris.patient" else None
    if patient is None and hasattr(target, "audit_patient"):
        patient = target.audit_patient()
    if patient is not None:
        fields["patient_key"] = str(patient.pk)
        fields["patient_repr"] = str(patient)[:255]
    return fields


class Facts(TypedDict, total=False):
    """Who did what, how and from where: the fields of an event besides its action and object."""

    request: HttpRequest | None
    actor: Any
    actor_name: str
    channel: str | None
    source_address: str
    outcome: str
    detail: str
    object_type: str
    object_id: str
    occurred_at: dt.datetime


def _build(
    action: str,
    target: models.Model | None = None,
    *,
    request: HttpRequest | None = None,
    actor: Any = None,
    actor_name: str = "",
    channel: str | None = None,
    source_address: str = "",
    outcome: str = Outcome.SUCCESS,
    detail: str = "",
    object_type: str = "",
    object_id: str = "",
    occurred_at: dt.datetime | None = None,
) -> AuditEvent:
    """The audit event of these facts, not saved; a request supplies the actor, channel and
    address."""
    if request is not None:
        # A DRF Request wraps the HttpRequest; reading its .user would authenticate again.
        request = getattr(request, "_request", request)
        user = getattr(request, "user", None)
        if actor is None and user is not None and user.is_authenticated:
            actor = user
        source_address = source_address or client_address(request)
        if channel is None:
            channel = Channel.API if request.path.startswith("/api/") else Channel.WEB  # type: ignore[union-attr]
    if actor is not None and not actor_name:
        actor_name = actor.get_username()
    fields = _object_fields(target)
    if object_type:
        fields["object_type"] = object_type
    if object_id:
        fields["object_id"] = object_id
    event = AuditEvent(
        occurred_at=occurred_at or timezone.now(),
        action=action,
        actor=actor,
        actor_name=actor_name[:150],
        channel=channel or Channel.SYSTEM,
        source_address=source_address[:255],
        outcome=outcome,
        detail=detail,
        **fields,
    )
    return event


def record(action: str, target: models.Model | None = None, **facts: Unpack[Facts]) -> AuditEvent:
    """Write one audit event, committed with the caller's transaction, if any, else on return.

    A request supplies the actor, channel and address when they are not given.
    """
    event = _build(action, target, **facts)
    settle()  # rows this thread sent beside go first: one statement at a time
    # No one asks for the event by id: inside db.writes_together it goes with the next
    # statement (the HL7 listener's commit), a round trip less.
    insert_row(event, wait=False)
    logger.debug("audit: %s", event)
    return event


def record_soon(action: str, **facts: Unpack[Facts]) -> None:
    """Queue one audit event for this process's audit writer, which commits it a moment
    later, off the caller's path; `flush` waits for it.

    For the events of a connection rather than of patient data (a DICOM association
    accepted or rejected), where the peer would otherwise wait for the row: the DICOM
    listener flushes when the association ends, so a row is committed before its
    association is over. Patient data access is recorded with `record`.
    """
    # Built by the writer too (a model instance costs the caller's thread about 0.1 ms),
    # dated now: the writer may commit it much later, past a database outage.
    facts.setdefault("occurred_at", timezone.now())
    _writer().put((action, facts))


def hold(action: str, **facts: Unpack[Facts]) -> None:
    """Keep one event of this thread's connection, with the time it happened, until the
    connection ends (`write_held`).

    For a DICOM association that only verifies or queries (core.dicom_lean): its row is
    written once the peer has the A-RELEASE-RP, and committed before the association's
    thread serves anything else. A process killed while such an association is open
    loses that association's row, and the rows of its queries not yet sent
    (`record_answered`: at most SEND_WITHIN seconds' worth).
    """
    _keep(action, facts, answered=False)


def record_answered(action: str, **facts: Unpack[Facts]) -> Facts:
    """Record one event of the request this thread is answering (a DICOM query), kept until
    the answer is out: the answer does not wait for the row (`answering` says when it is
    written). The facts returned may still be changed until then (how many matches a
    cancelled query sent).

    For threads that serve their requests through `answering` and end with `write_held`
    (core.dicom_server binds it): nothing else writes the event. Once it is sent, the
    thread's database connection is busy until the thread waits for the row (its next
    request, `record`, or its end): nothing else may use it meanwhile.
    """
    return _keep(action, facts, answered=True)


@contextlib.contextmanager
def answering(*, later: bool = False) -> Iterator[None]:
    """Around the serving of one request of a connection on its thread: events sent for an
    earlier request are waited for before this one uses the database, and those recorded
    while answering this one (`record_answered`) are written once it is answered, before
    the thread goes on. With LATER they are only sent, when the connection is idle a
    moment (`send_answered`) or ends (`write_held`), or at the end of a request answered
    SEND_WITHIN seconds or more after the oldest was recorded: for a thread that serves
    its connection alone, to its end."""
    settle()
    try:
        yield
    finally:
        if later:
            send_when_due()
        else:
            send_answered()
            settle()


# How long at most (seconds) an answered request's events wait for their connection to be
# idle before they are sent (answering(later=True)), as long as no request takes longer.
SEND_WITHIN = 0.2


def unsent_since() -> float | None:
    """When (time.monotonic) this thread recorded the oldest answered event it has not sent
    yet; None when there is none."""
    for event in _KEPT.events:
        if event.answered:
            return event.kept_at
    return None


def send_when_due() -> float | None:
    """Send this thread's answered events if the oldest was recorded SEND_WITHIN seconds ago
    or more; otherwise return the seconds left until then (None: nothing left to send)."""
    since = unsent_since()
    if since is None:
        return None
    left = SEND_WITHIN - (time.monotonic() - since)
    if left > 0:
        return left
    send_answered()
    return None


def send_answered() -> None:
    """Send the events of the requests this thread answered, in one statement, without
    waiting for it (settle waits)."""
    _send(answered_only=True)


def settle() -> None:
    """Wait for the events this thread sent. Those the database did not take go to the
    audit writer, which waits out an outage or logs them whole."""
    wait, sent = _KEPT.waiting, _KEPT.sent
    if wait is None:
        return
    _KEPT.waiting, _KEPT.sent = None, []
    try:
        wait()
    except Exception:
        _hand_to_writer(sent)
        return
    _forget(len(sent))


def write_held(timeout: float = 10.0) -> bool:
    """Write the events this thread keeps (held, or recorded and not yet sent), after those
    it sent, and wait until everything queued for the audit writer is committed; False on
    timeout. For the end of a connection.

    An event the database does not take now goes to the writer, which waits out an outage.
    Until each is written or queued, flush waits for it.
    """
    _send(answered_only=False)
    settle()
    writer = _WRITER[0] if _WRITER else None
    return writer.flush(timeout) if writer is not None else True


def flush(timeout: float = 10.0) -> bool:
    """Wait until every event recorded so far is committed: those queued by record_soon,
    and those kept by connections (committed as their requests are answered, or as each
    connection ends); False on timeout."""
    deadline = time.monotonic() + timeout
    with _KEPT_CHANGED:
        if not _KEPT_CHANGED.wait_for(lambda: _KEPT_COUNT[0] == 0, timeout):
            return False
    writer = _WRITER[0] if _WRITER else None
    return writer.flush(max(deadline - time.monotonic(), 0)) if writer is not None else True


class _Event(NamedTuple):
    action: str
    facts: Facts
    answered: bool  # of a request answered (record_answered), not held for the end
    kept_at: float  # time.monotonic()


class _Kept(threading.local):
    """The events a thread keeps for its connection, and those it sent and has not yet
    waited for (with the function that waits)."""

    def __init__(self) -> None:
        self.events: list[_Event] = []
        self.waiting: Callable[[], None] | None = None
        self.sent: list[_Event] = []


_KEPT = _Kept()
# How many events all threads keep, for flush to wait on.
_KEPT_COUNT = [0]
_KEPT_CHANGED = threading.Condition()


def _keep(action: str, facts: Facts, *, answered: bool) -> Facts:
    facts.setdefault("occurred_at", timezone.now())
    with _KEPT_CHANGED:
        _KEPT.events.append(_Event(action, facts, answered, time.monotonic()))
        _KEPT_COUNT[0] += 1
    return facts


def _send(*, answered_only: bool) -> None:
    """Send this thread's kept events (only those of answered requests, with ANSWERED_ONLY)
    in one statement, without waiting (settle waits)."""
    chosen: list[_Event] = []
    left: list[_Event] = []
    for event in _KEPT.events:
        (chosen if event.answered or not answered_only else left).append(event)
    if not chosen:
        return
    _KEPT.events = left
    settle()  # one statement at a time on the connection
    try:
        _KEPT.waiting = insert_rows_beside(
            [_build(event.action, None, **event.facts) for event in chosen]
        )
        _KEPT.sent = chosen
    except Exception:
        _hand_to_writer(chosen)


def _hand_to_writer(events: list[_Event]) -> None:
    """EVENTS, which the database did not take now, go to the writer."""
    logger.exception("audit events handed to the writer: %s", events)
    for event in events:
        _writer().put((event.action, event.facts))
    _forget(len(events))


def _forget(count: int) -> None:
    """COUNT kept events are written, or queued for the writer (which flush waits for)."""
    with _KEPT_CHANGED:
        _KEPT_COUNT[0] -= count
        _KEPT_CHANGED.notify_all()


class _Writer(threading.Thread):
    """Commits queued events one by one. It waits out a database outage; an event the
    database refuses WRITE_ATTEMPTS times (bad data, not an outage) goes to the log whole."""

    def __init__(self) -> None:
        super().__init__(name="audit-writer", daemon=True)
        self.events: queue.Queue[tuple[str, Facts]] = queue.Queue()

    def put(self, event: tuple[str, Facts]) -> None:
        self.events.put(event)

    def flush(self, timeout: float) -> bool:
        return wait_drained(self.events, timeout)

    def run(self) -> None:
        while True:
            action, facts = self.events.get()
            try:
                self._commit(_build(action, None, **facts))
            except Exception:  # facts it cannot make an event of: logged, the writer goes on
                logger.exception("audit event cannot be made: %s %s", action, facts)
            finally:
                if self.events.empty():
                    # The connection goes back to the pool at once: this thread lives as
                    # long as the process and must not hold one (a test database could
                    # not be dropped). Events come per association, not per instance.
                    close_old_connections()
                self.events.task_done()

    def _commit(self, event: AuditEvent) -> None:
        for attempt in itertools.count(1):
            try:
                insert_row(event)
                return
            except (OperationalError, InterfaceError):
                logger.exception("audit event waits for the database: %s", event)
            except Exception:
                if attempt >= WRITE_ATTEMPTS:
                    # Kept in the log, whole, for an administrator to restore.
                    logger.exception("audit event cannot be written: %s", vars(event))
                    return
                logger.exception("audit event not written (attempt %d)", attempt)
            close_old_connections()
            time.sleep(min(0.1 * 2 ** min(attempt, 8), 30.0))


WRITE_ATTEMPTS = 5
_WRITER: list[_Writer] = []
_WRITER_LOCK = threading.Lock()


def _writer() -> _Writer:
    with _WRITER_LOCK:
        if not _WRITER:
            writer = _Writer()
            writer.start()
            atexit.register(writer.flush, 10.0)
            _WRITER.append(writer)
        return _WRITER[0]


def record_query(
    request: HttpRequest, object_type: str, *, count: int, criteria: str = ""
) -> AuditEvent:
    """Record that a person listed COUNT objects of OBJECT_TYPE matching CRITERIA."""
    return record(
        Action.QUERY,
        request=request,
        object_type=object_type,
        detail=f"{count} result(s); {criteria}".rstrip("; "),
    )
