"""Writes of the RIS: register patients, book and track exams.

The front desk's pages, the HL7 interface and the demo seeding all call these, so an
order booked in the browser and one received by ORM^O01 are the same thing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from guardian.models import UserObjectPermission
from guardian.shortcuts import assign_perm, remove_perm
from pydicom.uid import generate_uid

from core import audit
from core.db import execute_later, fetch, insert_row, insert_rows
from ris import signals
from ris.models import (
    AssigningAuthority,
    NumberSequence,
    Order,
    Patient,
    PatientIdentifier,
    Priority,
    ProcedureType,
    RequestedProcedure,
    Room,
    ScheduledProcedureStep,
)
from ris.names import patient_search_key


@dataclass(frozen=True)
class IdentifierInput:
    value: str
    issuer: str
    type: str = PatientIdentifier.Type.MEDICAL_RECORD


@dataclass
class PatientInput:
    family_name: str
    given_name: str = ""
    middle_name: str = ""
    birth_date: dt.date | None = None
    sex: str = "U"
    phone: str = ""
    email: str = ""
    address: str = ""
    identifiers: list[IdentifierInput] = field(default_factory=list)


def next_numbers(names: list[str]) -> dict[str, int]:
    """Return the next value of each counter in NAMES, in one statement."""
    # An upsert that returns the new values, atomic in PostgreSQL and in SQLite 3.35+:
    # booking takes two numbers, and HL7 books at message rate. Rows are taken in name
    # order, so two bookings never wait on each other's second row (no deadlock).
    names = sorted(set(names))
    table = NumberSequence._meta.db_table
    rows = fetch(
        f'INSERT INTO "{table}" (name, last_value) VALUES '  # noqa: S608
        + ", ".join(["(%s, 1)"] * len(names))
        + f' ON CONFLICT (name) DO UPDATE SET last_value = "{table}".last_value + 1 '
        "RETURNING name, last_value",
        names,
    )
    return {name: int(value) for name, value in rows}


def _accession_counter() -> tuple[str, str]:
    """Return today as yymmdd and the name of its accession counter (numbers restart daily)."""
    day = timezone.localdate().strftime("%y%m%d")
    return day, f"accession-{day}"


def _accession_number(day: str, value: int) -> str:
    """Return accession number VALUE of DAY: prefix, yymmdd, counter (at most 16 chars)."""
    return f"{settings.ACCESSION_PREFIX}{day}{value:05d}"


def generate_study_instance_uid() -> str:
    return generate_uid(prefix=settings.DICOM_UID_ROOT)


def _audit_kwargs(
    actor: Any, channel: str | None, source_address: str, actor_name: str = ""
) -> dict[str, Any]:
    return {
        "actor": actor,
        "actor_name": actor_name,
        "channel": channel,
        "source_address": source_address,
    }


def register_patient(
    data: PatientInput,
    *,
    actor: User | None = None,
    actor_name: str = "",
    channel: str | None = audit.Channel.WEB,
    source_address: str = "",
) -> Patient:
    """Create a patient with its identifiers; one already held by another patient is refused."""
    if not data.family_name.strip():
        raise ValidationError({"family_name": "A family name is required."})
    patient = Patient(
        family_name=data.family_name.strip(),
        given_name=data.given_name.strip(),
        middle_name=data.middle_name.strip(),
        birth_date=data.birth_date,
        sex=data.sex or "U",
        phone=data.phone,
        email=data.email,
        address=data.address,
    )
    _set_search_name(patient)
    patient.full_clean()
    # Every refusal comes before the first write, so the writes need no savepoint of their
    # own inside a caller's transaction (HL7 registers at message rate).
    plan = _plan_identifiers(None, list(data.identifiers))
    with transaction.atomic(savepoint=False):
        insert_row(patient)
        _write_identifiers(patient, plan)
        audit.record(
            audit.Action.CREATE,
            patient,
            **_audit_kwargs(actor, channel, source_address, actor_name),
        )
    return patient


@dataclass
class _IdentifierPlan:
    """Identifiers checked against the index: the issuers known, and what to write."""

    issuers: dict[str, AssigningAuthority]
    wanted: dict[tuple[str, str], IdentifierInput]
    held: dict[tuple[str, str], PatientIdentifier]


def _plan_identifiers(
    patient_pk: int | None, identifiers: list[IdentifierInput]
) -> _IdentifierPlan:
    """Check IDENTIFIERS for a patient (None: a new one) in one query, writing nothing.

    An identifier another patient holds is refused; one the patient holds is kept.
    """
    wanted: dict[tuple[str, str], IdentifierInput] = {}
    for identifier in identifiers:
        value = identifier.value.strip()
        if not value:
            raise ValidationError({"identifiers": "An identifier needs a value."})
        wanted.setdefault((identifier.issuer.strip(), value), identifier)
    plan = _IdentifierPlan({}, wanted, {})
    if not wanted:
        return plan
    rows = fetch(*_identifiers_statement(list(wanted)))
    for namespace, issuer_id, pk, value, holder, kind, is_alias in rows:
        issuer = plan.issuers.setdefault(
            namespace, AssigningAuthority(pk=issuer_id, namespace_id=namespace)
        )
        if pk is None or (namespace, value) not in wanted:
            continue
        if holder != patient_pk:
            raise ValidationError(
                {"identifiers": f"{value} ({namespace}) already belongs to patient {holder}."}
            )
        plan.held[(namespace, value)] = PatientIdentifier(
            pk=pk, patient_id=holder, value=value, issuer=issuer, type=kind, is_alias=is_alias
        )
    return plan


def identifiers_statement(identifiers: list[IdentifierInput]) -> tuple[str, list[str]]:
    """The statement registering IDENTIFIERS starts with, for a caller reading it ahead
    (core.db.read_ahead; the HL7 listener)."""
    return _identifiers_statement(
        [(identifier.issuer.strip(), identifier.value.strip()) for identifier in identifiers]
    )


def _identifiers_statement(keys: list[tuple[str, str]]) -> tuple[str, list[str]]:
    namespaces = sorted({namespace for namespace, _ in keys})
    values = sorted({value for _, value in keys})
    authority, held = AssigningAuthority._meta.db_table, PatientIdentifier._meta.db_table
    # The issuers and, joined to them, the identifiers with any of the values: one round
    # trip instead of two, and no query building (it runs for every ADT message).
    sql = (
        f"SELECT a.namespace_id, a.id, i.id, i.value, i.patient_id, i.type, i.is_alias "  # noqa: S608
        f'FROM "{authority}" a LEFT JOIN "{held}" i '
        f"ON i.issuer_id = a.id AND i.value IN ({', '.join(['%s'] * len(values))}) "
        f"WHERE a.namespace_id IN ({', '.join(['%s'] * len(namespaces))})"
    )
    return sql, [*values, *namespaces]


def _write_identifiers(patient: Patient, plan: _IdentifierPlan) -> list[PatientIdentifier]:
    """Create the issuers and identifiers PLAN lacks for PATIENT; return all it names."""
    for namespace in sorted({namespace for namespace, _ in plan.wanted} - plan.issuers.keys()):
        plan.issuers[namespace], _ = AssigningAuthority.objects.get_or_create(
            namespace_id=namespace
        )
    result, new = [], []
    for key, identifier in plan.wanted.items():
        found = plan.held.get(key)
        if found is None:
            found = PatientIdentifier(
                patient=patient, value=key[1], issuer=plan.issuers[key[0]], type=identifier.type
            )
            new.append(found)
        result.append(found)
    if new:
        # Written out: it runs for every registration, and bulk_create's query building
        # costs more than the insert.
        sql = (
            f'INSERT INTO "{PatientIdentifier._meta.db_table}" '  # noqa: S608
            "(patient_id, value, issuer_id, type, is_alias) VALUES "
            + ", ".join(["(%s, %s, %s, %s, %s)"] * len(new))
            + " RETURNING id"
        )
        params = [v for i in new for v in (i.patient_id, i.value, i.issuer_id, i.type, i.is_alias)]

        def written(rows: list[tuple[Any, ...]]) -> None:
            for identifier, (pk,) in zip(new, rows, strict=True):
                identifier.pk = pk
                identifier._state.adding = False

        # Nothing asks for them by id in the caller's transaction: inside db.writes_together
        # they go with the next statement (HL7: the commit); a reader finds them all the same.
        execute_later(sql, params, written)
    return result


def add_identifiers(
    patient: Patient, identifiers: list[IdentifierInput]
) -> list[PatientIdentifier]:
    """Attach IDENTIFIERS to PATIENT, in a fixed number of queries; issuers are created on
    first use, one held by another patient is refused, one PATIENT holds is kept as it is."""
    return _write_identifiers(patient, _plan_identifiers(patient.pk, identifiers))


@transaction.atomic
def grant_patient_access(patient: Patient, user: User) -> None:
    """Link USER's portal account to PATIENT's record, and to no other."""
    linked = Patient.objects.filter(user=user).exclude(pk=patient.pk).first()
    if linked is not None:
        raise ValidationError(f"{user.get_username()} is already linked to patient {linked.pk}.")
    if patient.user is not None and patient.user != user:
        remove_perm("ris.view_patient", patient.user, patient)
    patient.user = user
    patient.save(update_fields=["user", "updated_at"])
    assign_perm("ris.view_patient", user, patient)


def _set_search_name(patient: Patient) -> None:
    """Refresh PATIENT's search key from its names (see Patient.search_name)."""
    patient.search_name = patient_search_key(
        patient.family_name, patient.given_name, patient.middle_name
    )


# Demographic fields a person or an ADT message may change on a patient.
EDITABLE_PATIENT_FIELDS = (
    "family_name",
    "given_name",
    "middle_name",
    "name_prefix",
    "name_suffix",
    "birth_date",
    "sex",
    "phone",
    "email",
    "address",
)


def resolve_patient(patient: Patient) -> Patient:
    """Follow merges to the surviving record."""
    seen = {patient.pk}
    while patient.merged_into_id is not None:
        patient = Patient.objects.get(pk=patient.merged_into_id)
        if patient.pk in seen:  # a cycle would be a bug; stop rather than loop
            raise ValidationError(f"patient {patient.pk} is in a merge cycle")
        seen.add(patient.pk)
    return patient


def find_patient_by_identifier(value: str, issuer: str) -> Patient | None:
    """Return the (surviving) patient holding VALUE from ISSUER, aliases included."""
    identifier = (
        PatientIdentifier.objects.filter(value=value.strip(), issuer__namespace_id=issuer.strip())
        .select_related("patient")
        .first()
    )
    return resolve_patient(identifier.patient) if identifier else None


@transaction.atomic
def update_patient(
    patient: Patient,
    changes: dict[str, Any],
    *,
    actor: User | None = None,
    actor_name: str = "",
    channel: str | None = audit.Channel.WEB,
    source_address: str = "",
) -> list[str]:
    """Change PATIENT's demographics; return the names of the fields that really changed."""
    unknown = sorted(set(changes) - set(EDITABLE_PATIENT_FIELDS))
    if unknown:
        raise ValidationError(dict.fromkeys(unknown, "This field cannot be changed here."))
    patient = Patient.objects.select_for_update().get(pk=patient.pk)
    if patient.merged_into_id is not None:
        raise ValidationError(f"Patient {patient.pk} was merged into {patient.merged_into_id}.")
    changed = [name for name, value in changes.items() if getattr(patient, name) != value]
    if not changed:
        return []
    for name in changed:
        setattr(patient, name, changes[name])
    _set_search_name(patient)
    patient.full_clean(exclude=["user", "merged_into"])
    patient.save()
    audit.record(
        audit.Action.UPDATE,
        patient,
        detail=f"changed: {', '.join(changed)}",
        **_audit_kwargs(actor, channel, source_address, actor_name),
    )
    signals.patient_updated.send(Patient, patient=patient, changed=changed, actor=actor)
    return changed


@transaction.atomic
def merge_patients(
    survivor: Patient,
    merged: Patient,
    *,
    actor: User | None = None,
    actor_name: str = "",
    channel: str | None = audit.Channel.WEB,
    source_address: str = "",
) -> Patient:
    """Merge MERGED into SURVIVOR: orders, identifiers (kept as aliases) and grants move over."""
    survivor = resolve_patient(survivor)
    locked = {
        p.pk: p for p in Patient.objects.select_for_update().filter(pk__in=[survivor.pk, merged.pk])
    }
    survivor, merged = locked[survivor.pk], locked[merged.pk]
    if survivor.pk == merged.pk:
        raise ValidationError("A patient cannot be merged into itself.")
    if merged.merged_into_id is not None:
        raise ValidationError(
            f"Patient {merged.pk} was already merged into {merged.merged_into_id}."
        )
    Order.objects.filter(patient=merged).update(patient=survivor)
    merged_identifiers = list(merged.identifiers.select_related("issuer").order_by("id"))
    PatientIdentifier.objects.filter(patient=merged).update(patient=survivor, is_alias=True)
    for grant in UserObjectPermission.objects.filter(
        content_type__app_label="ris", content_type__model="patient", object_pk=str(merged.pk)
    ).select_related("user", "permission"):
        assign_perm(grant.permission.codename, grant.user, survivor)
    if merged.user_id is not None and survivor.user_id is None:
        portal_user = merged.user
        merged.user = None
        merged.merged_into = survivor
        merged.save(update_fields=["user", "merged_into", "updated_at"])
        survivor.user = portal_user
        survivor.save(update_fields=["user", "updated_at"])
    else:
        merged.merged_into = survivor
        merged.save(update_fields=["merged_into", "updated_at"])
    detail = f"merged patient {merged.pk} ({merged}) into {survivor.pk}"
    kwargs = _audit_kwargs(actor, channel, source_address, actor_name)
    audit.record(audit.Action.UPDATE, survivor, detail=detail, **kwargs)
    audit.record(audit.Action.UPDATE, merged, detail=detail, **kwargs)
    signals.patients_merged.send(
        Patient,
        survivor=survivor,
        merged=merged,
        merged_identifiers=merged_identifiers,
        actor=actor,
    )
    return survivor


@dataclass
class BookingInput:
    patient: Patient
    procedure_type: ProcedureType
    scheduled_start: dt.datetime
    room: Room | None = None
    referring_physician_name: str = ""
    referring_physician: User | None = None
    priority: str = Priority.ROUTINE
    reason: str = ""
    placer_order_number: str = ""
    accession_number: str = ""
    performing_physician_name: str = ""


def book_exam(
    booking: BookingInput,
    *,
    actor: User | None = None,
    actor_name: str = "",
    channel: str | None = audit.Channel.WEB,
    source_address: str = "",
) -> Order:
    """Create an order, its requested procedure and scheduled step, ready for the worklist."""
    if timezone.is_naive(booking.scheduled_start):
        raise ValidationError({"scheduled_start": "The start time must carry a time zone."})
    procedure = booking.procedure_type
    if not procedure.active:
        raise ValidationError({"procedure_type": f"{procedure.code} is not an active procedure."})
    room = booking.room
    if room is not None and room.modality != procedure.modality:
        raise ValidationError(
            {
                "room": f"{room.name} is a {room.modality} room; "
                f"{procedure.code} needs {procedure.modality}."
            }
        )
    accession = booking.accession_number.strip()
    if accession and _accession_taken(accession):
        raise ValidationError(
            {"accession_number": f"Accession number {accession} is already used."}
        )
    # The refusals above come before the first write, so the writes need no savepoint of
    # their own inside a caller's transaction (HL7 books at message rate).
    with transaction.atomic(savepoint=False):
        day, counter = _accession_counter()
        numbers = next_numbers(["sps"] if accession else ["sps", counter])
        if not accession:
            accession = _accession_number(day, numbers[counter])
            while _accession_taken(accession):
                # Typed by hand in the generated form: take the next number, not this
                # one again at every booking of the day.
                accession = _accession_number(day, next_numbers([counter])[counter])
        order = Order(
            accession_number=accession,
            placer_order_number=booking.placer_order_number,
            filler_order_number=accession,
            patient=booking.patient,
            referring_physician_name=booking.referring_physician_name,
            referring_physician=booking.referring_physician,
            priority=booking.priority,
            reason=booking.reason,
            created_by=actor,
        )
        requested = RequestedProcedure(
            order=order,
            requested_procedure_id="1",
            procedure_type=procedure,
            description=procedure.name[:64],
            study_instance_uid=generate_study_instance_uid(),
        )
        # The order and its requested procedure in one statement: booking from HL7 runs
        # at message rate, and each statement costs a round trip.
        insert_rows(order, requested, "order")
        start = booking.scheduled_start
        step = ScheduledProcedureStep(
            requested_procedure=requested,
            sps_id=f"S{numbers['sps']:09d}",
            modality=procedure.modality,
            station_ae_title=(room.station_ae_title or "") if room else "",
            station_name=room.station_name if room else "",
            room=room,
            scheduled_start=start,
            scheduled_end=start + dt.timedelta(minutes=procedure.default_duration_minutes),
            performing_physician_name=booking.performing_physician_name,
            description=procedure.name[:64],
        )
        # Nothing asks for the step by id in the booking's transaction (see db.insert_row).
        insert_row(step, wait=False)
        if booking.referring_physician is not None:
            # The referring physician sees the orders they referred, and those patients.
            assign_perm("ris.view_order", booking.referring_physician, order)
            assign_perm("ris.view_patient", booking.referring_physician, booking.patient)
        audit.record(
            audit.Action.CREATE, order, **_audit_kwargs(actor, channel, source_address, actor_name)
        )
    return order


def _accession_taken(accession: str) -> bool:
    # Written out: it runs for every booking, and the ORM's query building costs more.
    return bool(
        fetch(
            f'SELECT 1 FROM "{Order._meta.db_table}" WHERE accession_number = %s',  # noqa: S608
            [accession],
        )
    )


def _set_order_status(order: Order, status: str, actor: User | None) -> None:
    """Save ORDER's new STATUS and tell the listeners (HL7 status out, boards)."""
    old_status = order.status
    order.status = status
    order.save(update_fields=["status", "updated_at"])
    signals.order_status_changed.send(
        Order, order=order, old_status=old_status, new_status=status, actor=actor
    )


_OPEN_STEP_STATES = (
    ScheduledProcedureStep.Status.SCHEDULED,
    ScheduledProcedureStep.Status.ARRIVED,
)


@transaction.atomic
def check_in(order: Order, *, actor: User | None = None, source_address: str = "") -> Order:
    """Mark the patient of ORDER as arrived; only a scheduled order can be checked in."""
    order = Order.objects.select_for_update().get(pk=order.pk)
    if order.status != Order.Status.SCHEDULED:
        raise ValidationError(
            f"Order {order.accession_number} is {order.get_status_display()}, not scheduled."
        )
    _set_order_status(order, Order.Status.ARRIVED, actor)
    ScheduledProcedureStep.objects.filter(
        requested_procedure__order=order, status=ScheduledProcedureStep.Status.SCHEDULED
    ).update(status=ScheduledProcedureStep.Status.ARRIVED, updated_at=timezone.now())
    audit.record(
        audit.Action.UPDATE,
        order,
        actor=actor,
        channel=audit.Channel.WEB,
        source_address=source_address,
        detail="checked in",
    )
    return order


_OPEN_ORDER_STATES = (Order.Status.SCHEDULED, Order.Status.ARRIVED)
_CANCELLABLE_IN_ERROR = (*_OPEN_ORDER_STATES, Order.Status.COMPLETED)
_STEP_STATES_CANCELLED_IN_ERROR = (
    *_OPEN_STEP_STATES,
    ScheduledProcedureStep.Status.COMPLETED,
    ScheduledProcedureStep.Status.DISCONTINUED,
)


def _record_cancellation(order: Order, reason: str, actor: User | None) -> None:
    """Keep why, by whom and when ORDER was called off."""
    order.cancel_reason = reason
    order.cancelled_by = actor
    order.cancelled_at = timezone.now()
    order.save(update_fields=["cancel_reason", "cancelled_by", "cancelled_at", "updated_at"])


@transaction.atomic
def cancel_order(
    order: Order,
    reason: str,
    *,
    actor: User | None = None,
    actor_name: str = "",
    channel: str | None = audit.Channel.WEB,
    source_address: str = "",
    booked_in_error: bool = False,
) -> Order:
    """Cancel ORDER and take its open steps off the worklist; a performed exam stays.

    BOOKED_IN_ERROR cancels a completed order too, performed steps and all: one booked
    after the fact for images that turn out not to be its exam (reconciliation's undo of
    "mark as unscheduled"). The placer hears CA as for any cancellation.
    """
    order = Order.objects.select_for_update().get(pk=order.pk)
    cancellable = _CANCELLABLE_IN_ERROR if booked_in_error else _OPEN_ORDER_STATES
    if order.status not in cancellable:
        raise ValidationError(
            f"Order {order.accession_number} is {order.get_status_display()}"
            " and cannot be cancelled."
        )
    if not reason.strip():
        raise ValidationError({"reason": "A cancellation needs a reason."})
    _record_cancellation(order, reason.strip(), actor)
    _set_order_status(order, Order.Status.CANCELLED, actor)
    RequestedProcedure.objects.filter(order=order).update(
        status=RequestedProcedure.Status.CANCELLED
    )
    step_states = _STEP_STATES_CANCELLED_IN_ERROR if booked_in_error else _OPEN_STEP_STATES
    ScheduledProcedureStep.objects.filter(
        requested_procedure__order=order, status__in=step_states
    ).update(status=ScheduledProcedureStep.Status.CANCELLED, updated_at=timezone.now())
    audit.record(
        audit.Action.UPDATE,
        order,
        detail=f"cancelled: {reason.strip()}",
        **_audit_kwargs(actor, channel, source_address, actor_name),
    )
    return order


# Exam tracking: what the modality reports by MPPS (or a technologist at the console).
# A step starts, then is completed or discontinued; its requested procedure and order
# follow: the order is in progress once a step starts, and completed once none of its
# steps is open any more.
_FINISHED_STEP_STATES = (
    ScheduledProcedureStep.Status.COMPLETED,
    ScheduledProcedureStep.Status.DISCONTINUED,
    ScheduledProcedureStep.Status.CANCELLED,
    ScheduledProcedureStep.Status.NO_SHOW,
)
_UNFINISHED_ORDER_STATES = (
    Order.Status.SCHEDULED,
    Order.Status.ARRIVED,
    Order.Status.IN_PROGRESS,
)


def _lock_exam(
    steps: list[ScheduledProcedureStep],
) -> tuple[list[Order], list[ScheduledProcedureStep]]:
    """Lock the orders of STEPS, then the steps: orders first, as check-in and cancel do."""
    if not steps:
        raise ValidationError("No scheduled procedure step was given.")
    step_ids = sorted({step.pk for step in steps})
    orders = list(
        Order.objects.select_for_update()
        .filter(
            pk__in=ScheduledProcedureStep.objects.filter(pk__in=step_ids).values(
                "requested_procedure__order_id"
            )
        )
        .order_by("pk")
    )
    locked = list(
        ScheduledProcedureStep.objects.select_for_update().filter(pk__in=step_ids).order_by("pk")
    )
    return orders, locked


def _refuse(steps: list[ScheduledProcedureStep], allowed: tuple[str, ...], verb: str) -> None:
    refused = [step for step in steps if step.status not in allowed]
    if refused:
        raise ValidationError(
            "; ".join(
                f"SPS {step.sps_id} is {step.get_status_display()} and cannot be {verb}"
                for step in refused
            )
        )


def _audit_exam(
    orders: list[Order],
    detail: str,
    *,
    actor: User | None,
    actor_name: str,
    channel: str | None,
    source_address: str,
) -> None:
    for order in orders:
        audit.record(
            audit.Action.UPDATE,
            order,
            actor=actor,
            actor_name=actor_name,
            channel=channel,
            source_address=source_address,
            detail=detail,
        )


def _sps_ids(steps: list[ScheduledProcedureStep]) -> str:
    return ", ".join(step.sps_id for step in steps)


@transaction.atomic
def start_exam(
    steps: list[ScheduledProcedureStep],
    *,
    started_at: dt.datetime,
    performed_station_ae_title: str = "",
    performed_station_name: str = "",
    actor: User | None = None,
    actor_name: str = "",
    channel: str | None = audit.Channel.DICOM,
    source_address: str = "",
) -> list[ScheduledProcedureStep]:
    """Mark STEPS in progress, and their requested procedures and orders with them."""
    if timezone.is_naive(started_at):
        raise ValidationError({"started_at": "The start time must carry a time zone."})
    orders, locked = _lock_exam(steps)
    # A step already in progress stays so: a second performed step may share it (IHE SWF).
    _refuse(locked, (*_OPEN_STEP_STATES, ScheduledProcedureStep.Status.IN_PROGRESS), "started")
    ScheduledProcedureStep.objects.filter(
        pk__in=[step.pk for step in locked], status__in=_OPEN_STEP_STATES
    ).update(status=ScheduledProcedureStep.Status.IN_PROGRESS, updated_at=timezone.now())
    RequestedProcedure.objects.filter(
        pk__in={step.requested_procedure_id for step in locked},
        status=RequestedProcedure.Status.SCHEDULED,
    ).update(status=RequestedProcedure.Status.IN_PROGRESS)
    for order in orders:
        if order.status in (Order.Status.SCHEDULED, Order.Status.ARRIVED):
            _set_order_status(order, Order.Status.IN_PROGRESS, actor)
    station = " ".join(
        part for part in (performed_station_ae_title, performed_station_name) if part
    )
    where = f" on {station}" if station else ""
    _audit_exam(
        orders,
        f"exam started: SPS {_sps_ids(locked)}{where} at {started_at.isoformat()}",
        actor=actor,
        actor_name=actor_name,
        channel=channel,
        source_address=source_address,
    )
    for step in locked:
        step.refresh_from_db(fields=["status", "updated_at"])
    return locked


def _finish_exam(
    steps: list[ScheduledProcedureStep],
    new_status: str,
    ended_at: dt.datetime,
    *,
    reason: str = "",
    actor: User | None,
    actor_name: str,
    channel: str | None,
    source_address: str,
) -> list[ScheduledProcedureStep]:
    """End STEPS in NEW_STATUS; complete the procedures and orders left with no open step."""
    if timezone.is_naive(ended_at):
        raise ValidationError({"ended_at": "The end time must carry a time zone."})
    orders, locked = _lock_exam(steps)
    verb = ScheduledProcedureStep.Status(new_status).label.lower()
    _refuse(locked, (ScheduledProcedureStep.Status.IN_PROGRESS, new_status), verb)
    ScheduledProcedureStep.objects.filter(
        pk__in=[step.pk for step in locked], status=ScheduledProcedureStep.Status.IN_PROGRESS
    ).update(status=new_status, updated_at=timezone.now())
    open_steps = ScheduledProcedureStep.objects.exclude(status__in=_FINISHED_STEP_STATES)
    # "Images received" (set by reconciliation) is further along than completed, and stays.
    RequestedProcedure.objects.filter(
        pk__in={step.requested_procedure_id for step in locked},
        status__in=(RequestedProcedure.Status.SCHEDULED, RequestedProcedure.Status.IN_PROGRESS),
    ).exclude(pk__in=open_steps.values("requested_procedure_id")).update(
        status=RequestedProcedure.Status.COMPLETED
    )
    for order in orders:
        still_open = open_steps.filter(requested_procedure__order_id=order.pk).exists()
        if order.status in _UNFINISHED_ORDER_STATES and not still_open:
            _set_order_status(order, Order.Status.COMPLETED, actor)
    _audit_exam(
        orders,
        f"exam {verb}: SPS {_sps_ids(locked)} at {ended_at.isoformat()}"
        + (f": {reason}" if reason else ""),
        actor=actor,
        actor_name=actor_name,
        channel=channel,
        source_address=source_address,
    )
    for step in locked:
        step.refresh_from_db(fields=["status", "updated_at"])
    return locked


@transaction.atomic
def complete_exam(
    steps: list[ScheduledProcedureStep],
    *,
    ended_at: dt.datetime,
    actor: User | None = None,
    actor_name: str = "",
    channel: str | None = audit.Channel.DICOM,
    source_address: str = "",
) -> list[ScheduledProcedureStep]:
    """Mark STEPS completed; an order is completed once none of its steps is open."""
    return _finish_exam(
        steps,
        ScheduledProcedureStep.Status.COMPLETED,
        ended_at,
        actor=actor,
        actor_name=actor_name,
        channel=channel,
        source_address=source_address,
    )


@transaction.atomic
def discontinue_exam(
    steps: list[ScheduledProcedureStep],
    *,
    reason: str,
    ended_at: dt.datetime,
    actor: User | None = None,
    actor_name: str = "",
    channel: str | None = audit.Channel.DICOM,
    source_address: str = "",
) -> list[ScheduledProcedureStep]:
    """Mark STEPS discontinued for REASON; an order with no open step left is completed."""
    return _finish_exam(
        steps,
        ScheduledProcedureStep.Status.DISCONTINUED,
        ended_at,
        reason=reason.strip() or "no reason given",
        actor=actor,
        actor_name=actor_name,
        channel=channel,
        source_address=source_address,
    )


@transaction.atomic
def mark_no_show(
    step: ScheduledProcedureStep,
    reason: str,
    *,
    actor: User | None = None,
    actor_name: str = "",
    channel: str | None = audit.Channel.WEB,
    source_address: str = "",
) -> ScheduledProcedureStep:
    """Mark STEP's patient as not come for REASON; an order left with no open step is called off."""
    if not reason.strip():
        raise ValidationError({"reason": "A no-show needs a reason."})
    orders, locked = _lock_exam([step])
    _refuse(locked, _OPEN_STEP_STATES, "marked as a no-show")
    ScheduledProcedureStep.objects.filter(pk=step.pk).update(
        status=ScheduledProcedureStep.Status.NO_SHOW, updated_at=timezone.now()
    )
    open_steps = ScheduledProcedureStep.objects.exclude(status__in=_FINISHED_STEP_STATES)
    RequestedProcedure.objects.filter(pk=locked[0].requested_procedure_id).exclude(
        pk__in=open_steps.values("requested_procedure_id")
    ).update(status=RequestedProcedure.Status.CANCELLED)
    for order in orders:
        if not open_steps.filter(requested_procedure__order_id=order.pk).exists():
            _record_cancellation(order, f"No-show: {reason.strip()}", actor)
            _set_order_status(order, Order.Status.CANCELLED, actor)
    _audit_exam(
        orders,
        f"no-show: SPS {_sps_ids(locked)}: {reason.strip()}",
        actor=actor,
        actor_name=actor_name,
        channel=channel,
        source_address=source_address,
    )
    locked[0].refresh_from_db(fields=["status", "updated_at"])
    return locked[0]


# Writes the HL7 interface needs beyond the front desk's: identifiers learnt from an ADT
# message, and an order changed by its placer (ORM^O01 XO).


@transaction.atomic
def add_patient_identifiers(
    patient: Patient,
    identifiers: list[IdentifierInput],
    *,
    actor: User | None = None,
    actor_name: str = "",
    channel: str | None = audit.Channel.WEB,
    source_address: str = "",
) -> list[PatientIdentifier]:
    """Attach the IDENTIFIERS that PATIENT does not hold yet; return the new ones."""
    patient = resolve_patient(patient)
    held = {(i.issuer.namespace_id, i.value) for i in patient.identifiers.select_related("issuer")}
    added = add_identifiers(
        patient,
        [i for i in identifiers if (i.issuer.strip(), i.value.strip()) not in held],
    )
    if added:
        audit.record(
            audit.Action.UPDATE,
            patient,
            detail="identifiers added: " + ", ".join(str(identifier) for identifier in added),
            **_audit_kwargs(actor, channel, source_address, actor_name),
        )
    return added


@dataclass
class OrderChanges:
    """What an order change may alter; None leaves a value as it is."""

    procedure_type: ProcedureType | None = None
    scheduled_start: dt.datetime | None = None
    priority: str | None = None
    reason: str | None = None
    referring_physician_name: str | None = None


@transaction.atomic
def change_order(
    order: Order,
    changes: OrderChanges,
    *,
    actor: User | None = None,
    actor_name: str = "",
    channel: str | None = audit.Channel.WEB,
    source_address: str = "",
) -> list[str]:
    """Change an order that is not started yet; return the names of what really changed."""
    order = Order.objects.select_for_update().get(pk=order.pk)
    if order.status not in (Order.Status.SCHEDULED, Order.Status.ARRIVED):
        raise ValidationError(
            f"Order {order.accession_number} is {order.get_status_display()} and cannot be changed."
        )
    changed: list[str] = []
    for name in ("priority", "reason", "referring_physician_name"):
        value = getattr(changes, name)
        if value is not None and getattr(order, name) != value:
            setattr(order, name, value)
            changed.append(name)
    if changed:
        order.full_clean(exclude=["patient", "referring_physician", "created_by"])
        order.save(update_fields=[*changed, "updated_at"])
    steps = ScheduledProcedureStep.objects.select_for_update().filter(
        requested_procedure__order=order, status__in=_OPEN_STEP_STATES
    )
    procedure = changes.procedure_type
    requested = RequestedProcedure.objects.filter(order=order).select_related("procedure_type")
    if procedure is not None and any(rp.procedure_type_id != procedure.pk for rp in requested):
        if not procedure.active:
            raise ValidationError(
                {"procedure_type": f"{procedure.code} is not an active procedure."}
            )
        for step in steps:
            if step.room is not None and step.room.modality != procedure.modality:
                raise ValidationError(
                    {
                        "procedure_type": f"{step.room.name} is a {step.room.modality} room; "
                        f"{procedure.code} needs {procedure.modality}."
                    }
                )
        requested.update(procedure_type=procedure, description=procedure.name[:64])
        steps.update(modality=procedure.modality, description=procedure.name[:64])
        changed.append("procedure_type")
    start = changes.scheduled_start
    if start is not None:
        if timezone.is_naive(start):
            raise ValidationError({"scheduled_start": "The start time must carry a time zone."})
        for step in steps.select_related("requested_procedure__procedure_type"):
            if step.scheduled_start != start or "procedure_type" in changed:
                minutes = step.requested_procedure.procedure_type.default_duration_minutes
                step.scheduled_start = start
                step.scheduled_end = start + dt.timedelta(minutes=minutes)
                step.save(update_fields=["scheduled_start", "scheduled_end", "updated_at"])
                if "scheduled_start" not in changed:
                    changed.append("scheduled_start")
    if changed:
        audit.record(
            audit.Action.UPDATE,
            order,
            detail=f"changed: {', '.join(changed)}",
            **_audit_kwargs(actor, channel, source_address, actor_name),
        )
    return changed


@transaction.atomic
def mark_images_received(
    requested_procedure: RequestedProcedure,
    *,
    study_instance_uid: str = "",
    actor: User | None = None,
    actor_name: str = "",
    channel: str | None = audit.Channel.DICOM,
    source_address: str = "",
) -> RequestedProcedure:
    """Record that REQUESTED_PROCEDURE's images arrived (under STUDY_INSTANCE_UID if given)."""
    locked = RequestedProcedure.objects.select_for_update().get(pk=requested_procedure.pk)
    changed: list[str] = []
    uid = study_instance_uid.strip()
    if uid and locked.study_instance_uid != uid:
        if RequestedProcedure.objects.filter(study_instance_uid=uid).exclude(pk=locked.pk).exists():
            raise ValidationError(
                {"study_instance_uid": f"Study {uid} belongs to another requested procedure."}
            )
        locked.study_instance_uid = uid
        changed.append("study_instance_uid")
    if locked.status not in (
        RequestedProcedure.Status.IMAGES_RECEIVED,
        RequestedProcedure.Status.PRELIMINARY_REPORT,
        RequestedProcedure.Status.REPORTED,
        RequestedProcedure.Status.CANCELLED,
    ):
        locked.status = RequestedProcedure.Status.IMAGES_RECEIVED
        changed.append("status")
    if changed:
        locked.save(update_fields=changed)
        audit.record(
            audit.Action.UPDATE,
            locked.order,
            detail=f"images received for requested procedure {locked.requested_procedure_id}",
            **_audit_kwargs(actor, channel, source_address, actor_name),
        )
    return locked


# Reporting tells the RIS how far the reading of a study has come (ris cannot import it).
_REPORTABLE_STATES = (
    RequestedProcedure.Status.IN_PROGRESS,
    RequestedProcedure.Status.COMPLETED,
    RequestedProcedure.Status.IMAGES_RECEIVED,
    RequestedProcedure.Status.PRELIMINARY_REPORT,
)


@transaction.atomic
def mark_reported(
    study_instance_uid: str,
    *,
    final: bool,
    actor: User | None = None,
    actor_name: str = "",
    channel: str | None = audit.Channel.WEB,
    source_address: str = "",
) -> RequestedProcedure | None:
    """Mark the requested procedure of a study read (preliminary) or reported (FINAL).

    Returns None when no requested procedure holds that Study Instance UID (a study
    reported without an order). A final report is never taken back to preliminary.
    """
    locked = (
        RequestedProcedure.objects.select_for_update()
        .select_related("order__patient")
        .filter(study_instance_uid=study_instance_uid.strip())
        .first()
    )
    if locked is None:
        return None
    status = RequestedProcedure.Status
    new_status = status.REPORTED if final else status.PRELIMINARY_REPORT
    if locked.status == new_status or locked.status not in _REPORTABLE_STATES:
        return locked
    # The order's own status (HL7 table 0038 as the placer hears it) stays completed: the
    # report itself goes out as ORU^R01, so no order_status_changed is sent here.
    locked.status = new_status
    locked.save(update_fields=["status"])
    audit.record(
        audit.Action.UPDATE,
        locked.order,
        detail=f"requested procedure {locked.requested_procedure_id} "
        f"{'reported' if final else 'read, preliminary report'}",
        **_audit_kwargs(actor, channel, source_address, actor_name),
    )
    return locked


@transaction.atomic
def restore_procedure_status(
    requested_procedure: RequestedProcedure,
    status: str,
    *,
    actor: User | None = None,
    actor_name: str = "",
    channel: str | None = audit.Channel.WEB,
    source_address: str = "",
    study_instance_uid: str = "",
) -> RequestedProcedure:
    """Put back REQUESTED_PROCEDURE's STATUS (and UID, if given) from before a wrong link."""
    if status not in RequestedProcedure.Status.values:
        raise ValidationError({"status": f"{status!r} is not a requested procedure status."})
    locked = RequestedProcedure.objects.select_for_update().get(pk=requested_procedure.pk)
    uid = study_instance_uid.strip()
    if uid and locked.study_instance_uid != uid:
        # The UID the order was given: the wrongly linked study's own is free again.
        locked.study_instance_uid = uid
        locked.save(update_fields=["study_instance_uid"])
    if locked.status != status:
        old = locked.get_status_display()
        locked.status = status
        locked.save(update_fields=["status"])
        audit.record(
            audit.Action.UPDATE,
            locked.order,
            detail=f"requested procedure {locked.requested_procedure_id}: "
            f"{old} undone, back to {locked.get_status_display()}",
            **_audit_kwargs(actor, channel, source_address, actor_name),
        )
    return locked
