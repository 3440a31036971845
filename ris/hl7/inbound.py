"""Inbound HL7: store each message, apply it through ris.services, and answer its ACK.

The message row and the change it causes commit in one transaction, and the ACK is
returned only after that commit: AA means applied and durable. Bad content rolls the
change back and answers AE naming the field; a type we do not handle answers AR. A
message repeated with a control id (MSH-10) already seen from the same sender is
answered with the ACK stored for the first one and not applied again.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import Model
from django.utils import timezone

from core import audit, db
from core.db import insert_row
from ris import services
from ris.hl7 import ack, er7, parsing
from ris.hl7.models import InboundMessage
from ris.hl7.parsing import FieldError, Identifier, OrderData, PatientData, error_at
from ris.models import AssigningAuthority, Order, Patient, PatientIdentifier, ProcedureType

logger = logging.getLogger(__name__)

# The sending application (MSH-3) whose message is being applied in this thread, if any:
# what that message changes is not echoed back to it (ris.hl7.receivers).
current_sender: ContextVar[str] = ContextVar("hl7_current_sender", default="")

_SQLITE_WRITER = threading.Lock()

# A transaction that meets a conflict (another connection registering the same patient,
# a deadlock, SQLite's busy lock) is tried again this many times in all.
ATTEMPTS = 3


class Conflict(Exception):
    """Another connection changed the same records meanwhile: try the message again."""


class _Refused(Exception):
    """A message's change was refused inside the message's own transaction, now rolled back.

    The next transaction stores the message with this outcome and does not apply it again.
    """

    def __init__(self, row: InboundMessage, outcome: Outcome, identifiers: list[Identifier]):
        super().__init__(outcome.text)
        self.row = row
        self.outcome = outcome
        self.identifiers = identifiers


class Unsupported(Exception):
    """A message we do not handle: answered AR."""

    def __init__(self, text: str, error_code: str) -> None:
        super().__init__(text)
        self.text = text
        self.error_code = error_code


@dataclass
class Context:
    """Who sends the message being applied, for the audit trail and the services."""

    sending_application: str
    peer: str
    tz: dt.tzinfo
    default_issuer: str
    # A person re-processing a stored message from the interface page.
    actor: User | None = None
    patient: Patient | None = None
    order_numbers: list[str] = field(default_factory=list)
    # PID-3 as sent, to find the patient of a message that was not applied.
    identifiers: list[Identifier] = field(default_factory=list)

    @property
    def audit(self) -> dict[str, Any]:
        return {
            "actor": self.actor,
            "actor_name": "" if self.actor else self.sending_application[:150],
            "channel": audit.Channel.HL7,
            "source_address": self.peer,
        }


@dataclass
class Outcome:
    code: str
    status: str
    text: str = ""
    error_code: str | None = None
    location: ack.ErrorLocation | None = None


Handler = Callable[[er7.Message, Context], str]


# ---------------------------------------------------------------- patients


def _identifier_inputs(identifiers: list[Identifier]) -> list[services.IdentifierInput]:
    return [services.IdentifierInput(i.value, i.issuer, i.type) for i in identifiers]


@functools.cache
def _columns(model: type[Model], alias: str = "") -> str:
    """MODEL's columns by name, for a written-out SELECT: a prepared statement's result
    keeps its shape when a migration adds a column (SELECT * would fail to run again)."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(f'{prefix}"{field.column}"' for field in model._meta.concrete_fields)


def _holders_statement(identifiers: list[Identifier]) -> tuple[str, list[str]]:
    values = sorted({i.value for i in identifiers})
    namespaces = sorted({i.issuer for i in identifiers})
    # Written out: it runs for every ADT and ORM message, and building it through the ORM
    # cost more than running it.
    patient, held = Patient._meta.db_table, PatientIdentifier._meta.db_table
    authority = AssigningAuthority._meta.db_table
    sql = (
        f"SELECT {_columns(Patient, 'p')}, a.namespace_id AS held_issuer, "  # noqa: S608
        f'i.value AS held_value FROM "{patient}" p '
        f'JOIN "{held}" i ON i.patient_id = p.id JOIN "{authority}" a ON a.id = i.issuer_id '
        f"WHERE i.value IN ({', '.join(['%s'] * len(values))}) "
        f"AND a.namespace_id IN ({', '.join(['%s'] * len(namespaces))})"
    )
    return sql, [*values, *namespaces]


def _holders(identifiers: list[Identifier]) -> dict[Identifier, Patient]:
    """Return the (surviving) patient holding each of IDENTIFIERS that is known, in one query."""
    if not identifiers:
        return {}
    sql, params = _holders_statement(identifiers)
    columns = [f.attname for f in Patient._meta.concrete_fields]
    found = {
        (row[-2], row[-1]): Patient.from_db(connection.alias, columns, row[:-2])
        for row in db.fetch(sql, params)
    }
    return {
        identifier: services.resolve_patient(found[(identifier.issuer, identifier.value)])
        for identifier in identifiers
        if (identifier.issuer, identifier.value) in found
    }


def _find_patient(
    identifiers: list[Identifier],
    segment: er7.Segment,
    number: int,
    holders: dict[Identifier, Patient] | None = None,
) -> Patient | None:
    """Return the one (surviving) patient holding any of IDENTIFIERS; two is an error."""
    holders = _holders(identifiers) if holders is None else holders
    found: dict[int, tuple[Patient, Identifier]] = {}
    for identifier, patient in holders.items():
        found.setdefault(patient.pk, (patient, identifier))
    if len(found) > 1:
        which = "; ".join(
            f"{i.value} ({i.issuer}) is patient {pk}" for pk, (_, i) in sorted(found.items())
        )
        raise error_at(
            segment,
            number,
            f"the identifiers belong to different patients: {which}; merge them first (A40)",
            ack.APPLICATION_INTERNAL_ERROR,
        )
    return next(iter(found.values()))[0] if found else None


def _register(data: PatientData, pid: er7.Segment, ctx: Context) -> Patient:
    if not data.family_name:
        raise error_at(pid, 5, "a new patient needs a family name", ack.REQUIRED_FIELD_MISSING, 1)
    patient_input = services.PatientInput(
        family_name=data.family_name,
        given_name=data.given_name or "",
        middle_name=data.middle_name or "",
        birth_date=data.birth_date,
        sex=data.sex or "U",
        phone=data.phone or "",
        email=data.email or "",
        address=data.address or "",
        identifiers=_identifier_inputs(data.identifiers),
    )
    try:
        patient = services.register_patient(patient_input, **ctx.audit)
    except ValidationError as exc:
        if _find_patient(data.identifiers, pid, 3) is not None:
            # Registered by another connection since we looked: apply the message again.
            raise Conflict(" ".join(exc.messages)) from exc
        raise _validation_error(exc, pid) from exc
    if data.name_prefix or data.name_suffix:
        extra = {"name_prefix": data.name_prefix or "", "name_suffix": data.name_suffix or ""}
        services.update_patient(patient, extra, **ctx.audit)
    return patient


def _validation_error(exc: ValidationError, segment: er7.Segment) -> FieldError:
    """Turn a service's refusal of PID content into an error naming the PID field."""
    fields = {"identifiers": 3, "family_name": 5, "given_name": 5, "birth_date": 7, "sex": 8}
    fields |= {"email": 13, "phone": 13, "address": 11}
    if hasattr(exc, "error_dict"):
        for name, errors in exc.message_dict.items():
            number = fields.get(name, 0)
            return FieldError(
                ack.ErrorLocation(segment.id, segment.sequence, number),
                " ".join(errors),
                ack.DATA_TYPE_ERROR if name != "identifiers" else ack.APPLICATION_INTERNAL_ERROR,
            )
    return FieldError(
        ack.ErrorLocation(segment.id, segment.sequence),
        " ".join(exc.messages),
        ack.APPLICATION_INTERNAL_ERROR,
    )


def _upsert_patient(
    data: PatientData, pid: er7.Segment, ctx: Context, *, update: bool = True
) -> tuple[Patient, bool]:
    """Find the patient by PID-3 and bring it up to date, or register it; True: registered."""
    holders = _holders(data.identifiers)
    patient = _find_patient(data.identifiers, pid, 3, holders)
    registered = patient is None
    if patient is None:
        patient = _register(data, pid, ctx)
    else:
        try:
            if update:
                services.update_patient(patient, data.changes(), **ctx.audit)
            new = [identifier for identifier in data.identifiers if identifier not in holders]
            if new:
                services.add_patient_identifiers(patient, _identifier_inputs(new), **ctx.audit)
        except ValidationError as exc:
            raise _validation_error(exc, pid) from exc
    ctx.patient = patient
    return patient, registered


def _require(message: er7.Message, segment_id: str) -> er7.Segment:
    segment = message.first(segment_id)
    if segment is None:
        raise parsing.missing(segment_id)
    return segment


def handle_adt_register_or_update(message: er7.Message, ctx: Context) -> str:
    """ADT A01, A04, A05, A08 (A28, A31): register the patient of PID, or update it."""
    pid = _require(message, "PID")
    data = parsing.parse_patient(pid, ctx.default_issuer)
    patient, registered = _upsert_patient(data, pid, ctx)
    return f"patient {patient.pk} {'registered' if registered else 'updated'}"


def handle_adt_merge(message: er7.Message, ctx: Context) -> str:
    """ADT A40: merge the patient of each MRG into the one of the PID before it."""
    pairs: list[tuple[er7.Segment, er7.Segment]] = []
    pid: er7.Segment | None = None
    for segment in message.segments:
        if segment.id == "PID":
            pid = segment
        elif segment.id == "MRG":
            if pid is None:
                raise parsing.missing("PID", "MRG must follow the PID of the surviving patient")
            pairs.append((pid, segment))
    if pid is None:
        raise parsing.missing("PID")
    if not pairs:
        raise parsing.missing("MRG")
    summaries = []
    for pid, mrg in pairs:
        data = parsing.parse_patient(pid, ctx.default_issuer)
        prior = parsing.parse_merge(mrg, ctx.default_issuer)
        merged = _find_patient(prior.prior_identifiers, mrg, 1)
        if merged is None:
            shown = ", ".join(f"{i.value} ({i.issuer})" for i in prior.prior_identifiers)
            raise error_at(
                mrg, 1, f"no patient with identifier {shown}", ack.UNKNOWN_KEY_IDENTIFIER
            )
        survivor = _find_patient(data.identifiers, pid, 3)
        if survivor is None:
            # The surviving identifiers are new here: the record being merged takes them
            # (IHE ITI-30, a merge into an unknown patient is a change of identifier).
            ctx.patient = merged
            services.add_patient_identifiers(
                merged, _identifier_inputs(data.identifiers), **ctx.audit
            )
            services.update_patient(merged, data.changes(), **ctx.audit)
            summaries.append(f"patient {merged.pk} takes the identifiers of PID-3")
            continue
        if survivor.pk != merged.pk:
            try:
                services.merge_patients(survivor, merged, **ctx.audit)
            except ValidationError as exc:
                raise error_at(
                    mrg, 1, " ".join(exc.messages), ack.APPLICATION_INTERNAL_ERROR
                ) from exc
            summaries.append(f"patient {merged.pk} merged into {survivor.pk}")
        else:
            summaries.append(f"patient {merged.pk} was already merged into {survivor.pk}")
        _upsert_patient(data, pid, ctx)
    return "; ".join(summaries)


# ---------------------------------------------------------------- orders


def _procedure_statement(codes: list[str]) -> str:
    # Written out, as the lookups below: they run for every new order, and building them
    # through the ORM cost several times more than running them.
    return (
        f'SELECT {_columns(ProcedureType)} FROM "{ProcedureType._meta.db_table}" '  # noqa: S608
        f"WHERE code IN ({', '.join(['%s'] * len(codes))})"
    )


def _placer_statement(placer_order_number: str) -> tuple[str, list[str]]:
    return (
        f'SELECT accession_number FROM "{Order._meta.db_table}" '  # noqa: S608
        "WHERE placer_order_number = %s AND status <> %s",
        [placer_order_number, Order.Status.CANCELLED],
    )


def _procedure(order: OrderData) -> ProcedureType:
    location = order.location("procedure", "OBR")
    if not order.procedure_code:
        raise FieldError(location, "procedure code is missing", ack.REQUIRED_FIELD_MISSING)
    codes = [c for c in (order.procedure_code, order.procedure_alternate_code) if c]
    sql = _procedure_statement(codes)
    columns = [f.attname for f in ProcedureType._meta.concrete_fields]
    procedures = {
        procedure.code: procedure
        for procedure in (
            ProcedureType.from_db(connection.alias, columns, row) for row in db.fetch(sql, codes)
        )
    }
    procedure = next((procedures[c] for c in codes if c in procedures), None)
    if procedure is None:
        raise FieldError(
            location,
            f"unknown procedure code {order.procedure_code!r}: not in the procedure catalogue",
            ack.TABLE_VALUE_NOT_FOUND,
        )
    if not procedure.active:
        raise FieldError(
            location, f"procedure {procedure.code} is not active", ack.TABLE_VALUE_NOT_FOUND
        )
    return procedure


def _find_order(order: OrderData) -> Order:
    """Return the order ORC-2 (placer) or ORC-3 (filler, our accession number) names."""
    found: Order | None = None
    if order.placer_order_number:
        found = (
            Order.objects.filter(placer_order_number=order.placer_order_number)
            .order_by("-id")
            .first()
        )
    if found is None and order.filler_order_number:
        number = order.filler_order_number
        found = (
            Order.objects.filter(accession_number=number).first()
            or Order.objects.filter(filler_order_number=number).order_by("-id").first()
        )
    if found is None:
        if not order.placer_order_number and not order.filler_order_number:
            raise FieldError(
                ack.ErrorLocation("ORC", order.location("control").sequence, 2),
                "placer (ORC-2) or filler (ORC-3) order number is required",
                ack.REQUIRED_FIELD_MISSING,
            )
        name = "placer_order_number" if order.placer_order_number else "filler_order_number"
        raise FieldError(
            order.location(name),
            f"no order with number {getattr(order, name)!r}",
            ack.UNKNOWN_KEY_IDENTIFIER,
        )
    return found


def _check_patient(order: Order, patient: Patient | None, pid: er7.Segment | None) -> None:
    if pid is not None and patient is not None and order.patient_id != patient.pk:
        raise error_at(
            pid,
            3,
            f"order {order.accession_number} belongs to another patient",
            ack.APPLICATION_INTERNAL_ERROR,
        )


def _new_order(
    order: OrderData, group: parsing.OrderGroup, patient: Patient, ctx: Context
) -> Order:
    if group.obr is None:
        raise parsing.missing("OBR", "a new order (ORC-1 NW) needs its OBR")
    procedure = _procedure(order)
    if order.placer_order_number:
        existing = db.fetch(*_placer_statement(order.placer_order_number))
        if existing:
            raise FieldError(
                order.location("placer_order_number"),
                f"placer order number {order.placer_order_number!r} is already order "
                f"{existing[0][0]}",
                ack.DUPLICATE_KEY_IDENTIFIER,
            )
    booking = services.BookingInput(
        patient=patient,
        procedure_type=procedure,
        scheduled_start=order.scheduled_start or timezone.now(),
        referring_physician_name=order.referring_physician_name,
        priority=order.priority or "routine",
        reason=order.reason,
        placer_order_number=order.placer_order_number,
        accession_number=order.accession_number,
    )
    try:
        return services.book_exam(booking, **ctx.audit)
    except ValidationError as exc:
        raise _order_error(exc, order) from exc


def _order_error(exc: ValidationError, order: OrderData) -> FieldError:
    names = {
        "accession_number": ("accession_number", ack.DUPLICATE_KEY_IDENTIFIER),
        "procedure_type": ("procedure", ack.TABLE_VALUE_NOT_FOUND),
        "scheduled_start": ("scheduled_start", ack.DATA_TYPE_ERROR),
    }
    if hasattr(exc, "error_dict"):
        for name, errors in exc.message_dict.items():
            where, code = names.get(name, ("", ack.APPLICATION_INTERNAL_ERROR))
            return FieldError(order.location(where), " ".join(errors), code)
    return FieldError(
        order.location("control"), " ".join(exc.messages), ack.APPLICATION_INTERNAL_ERROR
    )


def _cancel(order: OrderData, existing: Order, ctx: Context) -> str:
    if existing.status == Order.Status.CANCELLED:
        return f"order {existing.accession_number} was already cancelled"
    reason = order.control_reason or f"cancelled by {ctx.sending_application or 'HL7'}"
    try:
        services.cancel_order(existing, reason, **ctx.audit)
    except ValidationError as exc:
        raise FieldError(
            order.location("control"), " ".join(exc.messages), ack.APPLICATION_INTERNAL_ERROR
        ) from exc
    return f"order {existing.accession_number} cancelled"


def _change(order: OrderData, group: parsing.OrderGroup, existing: Order, ctx: Context) -> str:
    changes = services.OrderChanges(
        procedure_type=_procedure(order) if order.procedure_code else None,
        scheduled_start=order.scheduled_start,
        priority=order.priority or None,
        reason=order.reason or None,
        referring_physician_name=order.referring_physician_name or None,
    )
    try:
        changed = services.change_order(existing, changes, **ctx.audit)
    except ValidationError as exc:
        raise _order_error(exc, order) from exc
    what = ", ".join(changed) if changed else "nothing"
    return f"order {existing.accession_number} changed: {what}"


def _status(order: OrderData, existing: Order, ctx: Context) -> str:
    """ORC-1 SC from the placer: a cancellation (CA, DC) is applied; others are refused."""
    if order.order_status in ("CA", "DC"):
        return _cancel(order, existing, ctx)
    shown = order.order_status or "(empty)"
    raise FieldError(
        order.location("order_status"),
        f"order status {shown} cannot be applied here; the RIS tracks the exam itself "
        "(only CA and DC are taken from the placer)",
        ack.APPLICATION_INTERNAL_ERROR,
    )


def handle_order(message: er7.Message, ctx: Context) -> str:
    """ORM^O01 and OMI^O23: new (NW), cancel (CA, DC), change (XO), status (SC)."""
    pid = message.first("PID")
    groups = parsing.order_groups(message)
    if not groups:
        raise parsing.missing("ORC")
    data = parsing.parse_patient(pid, ctx.default_issuer) if pid is not None else None
    summaries = []
    for group in groups:
        order = parsing.parse_order(group.orc, group.obr, ctx.tz, tq1=group.tq1, ipc=group.ipc)
        if order.control == "NW":
            if pid is None or data is None:
                raise parsing.missing("PID", "a new order (ORC-1 NW) needs the patient's PID")
            patient = ctx.patient or _upsert_patient(data, pid, ctx, update=False)[0]
            booked = _new_order(order, group, patient, ctx)
            ctx.order_numbers.append(booked.accession_number)
            summaries.append(f"order {booked.accession_number} booked")
            continue
        if order.control not in ("CA", "DC", "XO", "SC"):
            raise error_at(
                group.orc,
                1,
                f"order control {order.control} is not supported (NW, CA, DC, XO, SC are)",
                ack.APPLICATION_INTERNAL_ERROR,
            )
        existing = _find_order(order)
        if pid is not None and data is not None:
            _check_patient(existing, _find_patient(data.identifiers, pid, 3), pid)
        ctx.patient = ctx.patient or existing.patient
        ctx.order_numbers.append(existing.accession_number)
        if order.control in ("CA", "DC"):
            summaries.append(_cancel(order, existing, ctx))
        elif order.control == "XO":
            summaries.append(_change(order, group, existing, ctx))
        else:
            summaries.append(_status(order, existing, ctx))
    return "; ".join(summaries)


HANDLERS: dict[tuple[str, str], Handler] = {
    ("ADT", "A01"): handle_adt_register_or_update,
    ("ADT", "A04"): handle_adt_register_or_update,
    ("ADT", "A05"): handle_adt_register_or_update,
    ("ADT", "A08"): handle_adt_register_or_update,
    ("ADT", "A28"): handle_adt_register_or_update,
    ("ADT", "A31"): handle_adt_register_or_update,
    ("ADT", "A40"): handle_adt_merge,
    ("ORM", "O01"): handle_order,
    ("OMI", "O23"): handle_order,
}


# ---------------------------------------------------------------- the message


def decode(content: bytes, header: ack.MessageHeader) -> str:
    """Decode CONTENT in the character set MSH-18 names; without one UTF-8, else Latin-1."""
    declared = header.character_set.split(header.component_separator)[0].strip()
    codec = parsing.CHARACTER_SETS.get(declared.upper())
    if codec is None:
        raise FieldError(
            ack.ErrorLocation("MSH", 1, 18),
            f"character set {declared!r} is not supported",
            ack.TABLE_VALUE_NOT_FOUND,
        )
    if not codec:
        try:
            return content.decode("utf-8")
        except UnicodeDecodeError:
            return content.decode("latin-1")
    try:
        return content.decode(codec)
    except UnicodeDecodeError as exc:
        raise FieldError(
            ack.ErrorLocation("MSH", 1, 18),
            f"the message is not valid {declared} (byte {exc.start})",
            ack.DATA_TYPE_ERROR,
        ) from exc


def _handler(header: ack.MessageHeader) -> Handler:
    code, trigger = header.message_type
    if not code:  # no type, no handler: rejected, as an unreadable header is
        raise Unsupported("MSH-9 message type is empty", ack.REQUIRED_FIELD_MISSING)
    version = header.version_id.split(header.component_separator)[0]
    if version not in parsing.SUPPORTED_VERSIONS:
        raise Unsupported(
            f"MSH-12 version {version or '(empty)'} is not supported "
            f"({', '.join(parsing.SUPPORTED_VERSIONS)} are)",
            ack.UNSUPPORTED_VERSION_ID,
        )
    handler = HANDLERS.get((code, trigger))
    if handler is None:
        label = f"{code}^{trigger}" if trigger else code
        known_code = any(code == c for c, _ in HANDLERS)
        raise Unsupported(
            f"message type {label} is not supported",
            ack.UNSUPPORTED_EVENT_CODE if known_code else ack.UNSUPPORTED_MESSAGE_TYPE,
        )
    return handler


def _apply(
    text: str,
    header: ack.MessageHeader,
    row: InboundMessage,
    ctx: Context,
    *,
    last_attempt: bool = True,
    savepoint: bool = True,
) -> Outcome:
    """Apply the message; bad content rolls back and becomes the outcome.

    With SAVEPOINT, the change alone rolls back and the caller's transaction goes on;
    without, the caller's transaction must end in a rollback if the outcome is not AA.
    """
    try:
        with transaction.atomic(savepoint=savepoint):
            handler = _handler(header)
            try:
                message = er7.parse(text)
            except er7.SegmentError as exc:
                # ERR-2 can only name the segment by the ID it was sent with.
                raise FieldError(
                    ack.ErrorLocation(exc.segment_id[:3]), exc.text, ack.SEGMENT_SEQUENCE_ERROR
                ) from exc
            parsing.check_segments(message)
            _describe(row, message, ctx)
            with applying_for(header.sending_application):
                summary = handler(message, ctx)
    except Unsupported as exc:
        return Outcome(
            ack.APPLICATION_REJECT, InboundMessage.Status.REJECTED, exc.text, exc.error_code
        )
    except FieldError as exc:
        return Outcome(
            ack.APPLICATION_ERROR, InboundMessage.Status.ERROR, exc.text, exc.code, exc.location
        )
    except ValidationError as exc:
        return Outcome(
            ack.APPLICATION_ERROR,
            InboundMessage.Status.ERROR,
            " ".join(exc.messages),
            ack.APPLICATION_INTERNAL_ERROR,
        )
    except (IntegrityError, OperationalError, Conflict):
        if not last_attempt:
            raise  # a conflict with another connection: the caller tries it all again
        return _failed(row)
    except Exception:  # a bug must cost one message, never the listener
        return _failed(row)
    return Outcome(ack.APPLICATION_ACCEPT, InboundMessage.Status.ACCEPTED, summary)


def _failed(row: InboundMessage) -> Outcome:
    logger.exception("HL7 %s %s: internal error", row.message_type, row.control_id)
    row.error = traceback.format_exc()[-4000:]
    return Outcome(
        ack.APPLICATION_ERROR,
        InboundMessage.Status.FAILED,
        "internal error; the message is kept and can be re-processed",
        ack.APPLICATION_INTERNAL_ERROR,
    )


def _describe(row: InboundMessage, message: er7.Message, ctx: Context) -> None:
    """Keep who and what the message is about as text, for the interface page's search."""
    pid = message.first("PID")
    if pid is not None:
        row.patient_name = " ".join(
            part for part in (pid.value(5, 1), pid.value(5, 2), pid.value(5, 3)) if part
        )[:200]
        identifiers = [
            f"{er7.pick(raw, pid.delimiters, 1)}^{er7.pick(raw, pid.delimiters, 4)}"
            for raw in pid.repetitions(3)
        ]
        row.patient_identifiers = " ".join(identifiers)[:255]
        ctx.identifiers = [
            Identifier(er7.pick(raw, pid.delimiters, 1), er7.pick(raw, pid.delimiters, 4))
            for raw in pid.repetitions(3)
            if er7.pick(raw, pid.delimiters, 1) and er7.pick(raw, pid.delimiters, 4)
        ]
    numbers = [
        number
        for group in parsing.order_groups(message)
        for number in (group.orc.value(2), group.orc.value(3))
        if number
    ]
    row.order_numbers = " ".join(numbers)[:255]


def _known_patient(identifiers: list[Identifier]) -> Patient | None:
    for identifier in identifiers[:3]:
        patient = services.find_patient_by_identifier(identifier.value, identifier.issuer)
        if patient is not None:
            return patient
    return None


def _context(header: ack.MessageHeader | None, peer: str, actor: User | None) -> Context:
    return Context(
        sending_application=header.sending_application if header else "",
        peer=peer,
        tz=timezone.get_default_timezone(),
        default_issuer=settings.HL7_DEFAULT_ASSIGNING_AUTHORITY,
        actor=actor,
    )


def _ack(header: ack.MessageHeader | None, outcome: Outcome) -> str:
    text = outcome.text if outcome.code != ack.APPLICATION_ACCEPT else ""
    return ack.build_ack(
        header,
        outcome.code,
        text,
        error_code=outcome.error_code,
        error_location=outcome.location,
        sending_application=settings.HL7_SENDING_APPLICATION,
        sending_facility=settings.HL7_SENDING_FACILITY,
    )


def _finish(
    row: InboundMessage, header: ack.MessageHeader | None, outcome: Outcome, ctx: Context
) -> str:
    reply = _ack(header, outcome)
    row.status = outcome.status
    row.ack_code = outcome.code
    row.ack = reply
    if outcome.code == ack.APPLICATION_ACCEPT:
        row.error = ""
        row.patient = ctx.patient
        numbers = [*row.order_numbers.split(), *ctx.order_numbers]
        row.order_numbers = " ".join(dict.fromkeys(numbers))[:255]
    else:
        row.error = "\n\n".join(part for part in (outcome.text, row.error) if part)
        # Nothing was applied, but the patient may be known: the message is found with them.
        row.patient = _known_patient(ctx.identifiers)
    row.error_location = str(outcome.location or "")[:32]
    row.processed_at = timezone.now()
    return reply


def receive(content: bytes, *, peer: str = "") -> bytes:
    """Store and apply the message in one MLLP frame; return its ACK, after the commit."""
    # Latin-1 maps every byte to one character and back: the header fields the ACK
    # echoes go back byte for byte, whatever the character set of the message.
    try:
        header = ack.parse_header(content.decode("latin-1"))
    except ack.HeaderError as exc:
        return _store_unreadable(content, exc, peer).encode("latin-1", errors="replace")
    try:
        text, decode_error = decode(content, header), None
    except FieldError as exc:
        text, decode_error = content.decode("latin-1"), exc
    attempt, refused = 1, None
    # The rows no one reads back (audit events, the message's own) go with the COMMIT, in
    # one round trip, when this transaction is the outermost one.
    outermost = not connection.in_atomic_block
    while True:
        try:
            with (
                _one_writer(),
                transaction.atomic(),
                # The last attempt writes each row when it is given: an error then meets
                # the message in _apply, which stores it as failed.
                db.writes_together(commit=outermost, together=attempt < ATTEMPTS),
            ):
                reply = _receive(
                    text, header, peer, decode_error, refused, last_attempt=attempt == ATTEMPTS
                )
            return reply.encode("latin-1", errors="replace")
        except _Refused as exc:
            # Rolled back whole (a message applied without a savepoint of its own costs two
            # round trips less); the next transaction only stores it with its outcome.
            refused = exc
        except (IntegrityError, OperationalError, Conflict):
            if attempt == ATTEMPTS:
                raise
            logger.info("HL7 %s: conflict, trying again (%d)", header.control_id, attempt)
            attempt += 1


@contextmanager
def _one_writer() -> Iterator[None]:
    """On SQLite, let one connection of this process write at a time.

    SQLite has a single writer anyway; queueing here is fairer and quicker than its
    busy-wait, and its in-memory test database has no busy-wait at all.
    """
    if connection.vendor != "sqlite":
        yield
        return
    with _SQLITE_WRITER:
        yield


def _receive(
    text: str,
    header: ack.MessageHeader,
    peer: str,
    decode_error: FieldError | None,
    refused: _Refused | None,
    *,
    last_attempt: bool,
) -> str:
    code, trigger = header.message_type
    fields: dict[str, Any] = {
        "peer": peer[:255],
        "sending_application": header.sending_application[:180],
        "sending_facility": header.sending_facility[:180],
        "message_type": (f"{code}^{trigger}" if trigger else code)[:32],
        "control_id": header.control_id[:199],
        "version": header.version_id[:16],
        "raw": text,
    }
    if header.control_id:
        _read_ahead(text, header, fields)
    original = _original(fields) if header.control_id else None
    if original is None:
        # Written once, with its outcome; a twin applied meanwhile by another connection
        # makes this insert fail on the unique constraint, and the retry finds that one.
        if refused is not None:
            return _process(refused.row, text, header, actor=None, refused=refused)
        row = InboundMessage(**fields)
        return _process(
            row, text, header, decode_error, actor=None, last_attempt=last_attempt, savepoint=False
        )
    repeat = InboundMessage(
        **fields,
        status=InboundMessage.Status.DUPLICATE,
        duplicate_of=original,
        patient_id=original.patient_id,
    )
    if original.status == InboundMessage.Status.FAILED:
        # The first one failed inside the RIS, not in its content: apply it now.
        original.attempts += 1
        _process(
            original, original.raw, header, decode_error, actor=None, last_attempt=last_attempt
        )
        logger.info("HL7 %s repeated after a failure: applied again", header.control_id)
    else:
        logger.info("HL7 %s repeated: answered with the first ACK", header.control_id)
    repeat.ack, repeat.ack_code = original.ack, original.ack_code
    repeat.patient_id = original.patient_id
    for name in ("patient_name", "patient_identifiers", "order_numbers"):
        setattr(repeat, name, getattr(original, name))
    repeat.processed_at = timezone.now()
    insert_row(repeat, wait=False)
    return original.ack


def _original_statement(fields: dict[str, Any]) -> tuple[str, list[str]]:
    table = InboundMessage._meta.db_table
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    return (
        f"SELECT id FROM {table} WHERE sending_application = %s AND sending_facility = %s"  # noqa: S608
        f" AND control_id = %s AND duplicate_of_id IS NULL{lock}",
        [fields["sending_application"], fields["sending_facility"], fields["control_id"]],
    )


def _read_ahead(text: str, header: ack.MessageHeader, fields: dict[str, Any]) -> None:
    """Read what applying the message will look up first, in one round trip with the
    control id check (core.db.read_ahead).

    A guess from a quick reading of PID and ORC/OBR: a lookup it gets wrong, or that the
    message does not make, runs as usual (or costs its run); what is applied is the same.
    """
    statements = [_original_statement(fields)]
    try:
        handler = HANDLERS.get(header.message_type)
        if handler in (handle_adt_register_or_update, handle_order):
            message = er7.parse(text)
            pid = message.first("PID")
            default_issuer = settings.HL7_DEFAULT_ASSIGNING_AUTHORITY
            identifiers = parsing.parse_identifiers(pid, 3, default_issuer) if pid else []
            if identifiers:
                statements.append(_holders_statement(identifiers))
            if handler is handle_adt_register_or_update and identifiers:
                inputs = _identifier_inputs(identifiers)
                statements.append(services.identifiers_statement(inputs))
            groups = parsing.order_groups(message) if handler is handle_order else []
            if len(groups) == 1 and groups[0].orc.value(1).strip().upper() == "NW":
                orc, obr = groups[0].orc, groups[0].obr
                if obr is not None:
                    codes = [c for c in (obr.value(4, 1).strip(), obr.value(4, 4).strip()) if c]
                    if codes:
                        statements.append((_procedure_statement(codes), codes))
                placer = orc.value(2, 1).strip() or (obr.value(2, 1).strip() if obr else "")
                if placer:
                    statements.append(_placer_statement(placer))
    except Exception:  # noqa: S110 - a message we cannot read ahead is read when applied
        pass
    db.read_ahead(statements)


def _original(fields: dict[str, Any]) -> InboundMessage | None:
    """Return the first message with this sender and control id, locked; None if new.

    Plain SQL: it runs for every message, and the ORM's query building would cost more
    than the query.
    """
    found = db.fetch(*_original_statement(fields))
    return InboundMessage.objects.get(pk=found[0][0]) if found else None


def _process(
    row: InboundMessage,
    text: str,
    header: ack.MessageHeader,
    decode_error: FieldError | None = None,
    *,
    actor: User | None,
    last_attempt: bool = True,
    savepoint: bool = True,
    refused: _Refused | None = None,
) -> str:
    ctx = _context(header, row.peer, actor)
    if refused is not None:
        outcome, ctx.identifiers = refused.outcome, refused.identifiers
    elif decode_error is not None:
        outcome = Outcome(
            ack.APPLICATION_ERROR,
            InboundMessage.Status.ERROR,
            decode_error.text,
            decode_error.code,
            decode_error.location,
        )
    else:
        outcome = _apply(text, header, row, ctx, last_attempt=last_attempt, savepoint=savepoint)
        if not savepoint and outcome.code != ack.APPLICATION_ACCEPT:
            raise _Refused(row, outcome, ctx.identifiers)
    reply = _finish(row, header, outcome, ctx)
    if row.pk is None:
        # With the commit, inside receive's db.writes_together.
        insert_row(row, wait=False)
    else:
        row.save()
    level = logging.INFO if outcome.code == ack.APPLICATION_ACCEPT else logging.WARNING
    logger.log(
        level, "HL7 %s %s: %s %s", row.message_type, row.control_id, outcome.code, outcome.text
    )
    return reply


def _store_unreadable(content: bytes, exc: ack.HeaderError, peer: str) -> str:
    """Answer AR to a message with no readable MSH, and keep it all the same."""
    logger.warning("HL7 message from %s rejected: %s", peer or "-", exc.text)
    outcome = Outcome(
        ack.APPLICATION_REJECT, InboundMessage.Status.REJECTED, exc.text, exc.error_code
    )
    reply = _ack(None, outcome)
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        text = content.decode("latin-1")
    InboundMessage.objects.create(
        peer=peer[:255],
        # PostgreSQL text holds no NUL character.
        raw=text.replace("\x00", "\\x00"),
        status=outcome.status,
        ack_code=outcome.code,
        ack=reply,
        error=exc.text,
        processed_at=timezone.now(),
    )
    return reply


@transaction.atomic
def reprocess(message: InboundMessage, *, actor: User) -> InboundMessage:
    """Apply again, as ACTOR asks, a stored message that was not accepted; return it."""
    row = InboundMessage.objects.select_for_update().get(pk=message.pk)
    if row.duplicate_of_id is not None:
        raise ValidationError("A repeated message is not applied; re-process the first one.")
    if row.status in (InboundMessage.Status.ACCEPTED, InboundMessage.Status.RECEIVED):
        raise ValidationError("This message was applied already.")
    try:
        header = ack.parse_header(row.raw)
    except ack.HeaderError as exc:
        raise ValidationError(f"The message cannot be read: {exc.text}.") from exc
    row.attempts += 1
    row.reprocessed_by = actor.get_username()[:150]
    row.error = ""
    _process(row, row.raw, header, actor=actor)
    audit.record(
        audit.Action.UPDATE,
        row,
        actor=actor,
        channel=audit.Channel.WEB,
        detail=f"re-processed HL7 {row.message_type} {row.control_id}: {row.ack_code}",
    )
    return row


@contextmanager
def applying_for(sending_application: str) -> Iterator[None]:
    """Within the block, changes count as made for SENDING_APPLICATION (no echo to it)."""
    token = current_sender.set(sending_application)
    try:
        yield
    finally:
        current_sender.reset(token)
