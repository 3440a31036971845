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
from typing import Any, Protocol, TypedDict, Unpack

from django.db import (
    InterfaceError,
    OperationalError,
    close_old_connections,
    models,
)
from django.http import HttpRequest
from django.utils import timezone

from core.db import insert_row, insert_row_beside
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


@contextlib.contextmanager
def recorded_beside(action: str, **facts: Unpack[Facts]) -> Iterator[Callable[[], None]]:
    """Send one audit event to the database now, outside any transaction, for the block
    that sends a query's answers: PostgreSQL commits the row while the answers go out
    (core.db.insert_row_beside), and the block uses the database for nothing else until
    the commit is waited for. That is when the block ends (before the final response; an
    error there is raised, as `record` would), or earlier through the function it yields.
    When the block ends early (the peer went away, or a cancel), it is waited for all the
    same, and a row that could not be written is in the log at least."""
    wait: Callable[[], None] | None = insert_row_beside(_build(action, None, **facts))

    def settle() -> None:
        nonlocal wait
        waiting, wait = wait, None
        if waiting is not None:
            waiting()

    try:
        yield settle
    except BaseException:
        try:
            settle()
        except Exception:
            logger.exception("audit event not written: %s %s", action, facts)
        raise
    settle()


def hold(action: str, **facts: Unpack[Facts]) -> None:
    """Keep one event of this thread's connection, with the time it happened, until the
    connection ends (`write_held`).

    For a DICOM association that only verifies or queries (core.dicom_lean): its row is
    written once the peer has the A-RELEASE-RP, and committed before the association's
    thread serves anything else; every query in it is recorded, with the peer's AE title
    and address, before its answer. A process killed while such an association is open
    loses that association's row, not its queries' rows.
    """
    facts.setdefault("occurred_at", timezone.now())
    with _HELD_CHANGED:
        _held().append((action, facts))
        _HELD_COUNT[0] += 1


def write_held(timeout: float = 10.0) -> bool:
    """Write the events this thread holds, and wait until everything queued for the audit
    writer is committed; False on timeout. For the end of a connection.

    An event the database does not take now goes to the writer, which waits out an outage.
    Until each is written or queued, flush waits for it.
    """
    held = _held()
    for action, facts in held:
        try:
            insert_row(_build(action, None, **facts))
        except Exception:
            logger.exception("audit event handed to the writer: %s %s", action, facts)
            _writer().put((action, facts))
    if held:
        with _HELD_CHANGED:
            _HELD.events = []
            _HELD_COUNT[0] -= len(held)
            _HELD_CHANGED.notify_all()
    writer = _WRITER[0] if _WRITER else None
    return writer.flush(timeout) if writer is not None else True


def flush(timeout: float = 10.0) -> bool:
    """Wait until every event recorded so far is committed: those queued by record_soon,
    and those held by connections (committed once each ends); False on timeout."""
    deadline = time.monotonic() + timeout
    with _HELD_CHANGED:
        if not _HELD_CHANGED.wait_for(lambda: _HELD_COUNT[0] == 0, timeout):
            return False
    writer = _WRITER[0] if _WRITER else None
    return writer.flush(max(deadline - time.monotonic(), 0)) if writer is not None else True


# Events held by each thread (hold), and how many in all, for flush to wait on.
_HELD = threading.local()
_HELD_COUNT = [0]
_HELD_CHANGED = threading.Condition()


def _held() -> list[tuple[str, Facts]]:
    held: list[tuple[str, Facts]] | None = getattr(_HELD, "events", None)
    if held is None:
        held = _HELD.events = []
    return held


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
