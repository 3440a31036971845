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
from django.db.models import F
from django.utils import timezone
from guardian.shortcuts import assign_perm, remove_perm
from pydicom.uid import generate_uid

from core import audit
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


def next_number(name: str) -> int:
    """Return the next value of the counter NAME; never the same twice, even across processes."""
    with transaction.atomic():
        NumberSequence.objects.get_or_create(name=name)
        NumberSequence.objects.filter(name=name).update(last_value=F("last_value") + 1)
        return NumberSequence.objects.select_for_update().get(name=name).last_value


def generate_accession_number(today: dt.date | None = None) -> str:
    """Return a new accession number: prefix, yymmdd, then a daily counter (at most 16 chars)."""
    today = today or timezone.localdate()
    day = today.strftime("%y%m%d")
    value = next_number(f"accession-{day}")
    return f"{settings.ACCESSION_PREFIX}{day}{value:05d}"


def generate_study_instance_uid() -> str:
    return generate_uid(prefix=settings.DICOM_UID_ROOT)


def _audit_kwargs(actor: Any, channel: str | None, source_address: str) -> dict[str, Any]:
    return {"actor": actor, "channel": channel, "source_address": source_address}


@transaction.atomic
def register_patient(
    data: PatientInput,
    *,
    actor: User | None = None,
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
    patient.full_clean()
    patient.save()
    for identifier in data.identifiers:
        add_identifier(patient, identifier)
    audit.record(audit.Action.CREATE, patient, **_audit_kwargs(actor, channel, source_address))
    return patient


def add_identifier(patient: Patient, identifier: IdentifierInput) -> PatientIdentifier:
    """Attach IDENTIFIER to PATIENT; the issuer is created on first use."""
    value = identifier.value.strip()
    if not value:
        raise ValidationError({"identifiers": "An identifier needs a value."})
    issuer, _ = AssigningAuthority.objects.get_or_create(namespace_id=identifier.issuer.strip())
    held = PatientIdentifier.objects.filter(issuer=issuer, value=value).select_related("patient")
    existing = held.first()
    if existing is not None:
        if existing.patient_id == patient.pk:
            return existing
        raise ValidationError(
            {"identifiers": f"{value} ({issuer}) already belongs to patient {existing.patient_id}."}
        )
    return PatientIdentifier.objects.create(
        patient=patient, value=value, issuer=issuer, type=identifier.type
    )


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


@transaction.atomic
def book_exam(
    booking: BookingInput,
    *,
    actor: User | None = None,
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
    accession = booking.accession_number.strip() or generate_accession_number()
    if Order.objects.filter(accession_number=accession).exists():
        raise ValidationError(
            {"accession_number": f"Accession number {accession} is already used."}
        )
    order = Order.objects.create(
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
    requested = RequestedProcedure.objects.create(
        order=order,
        requested_procedure_id="1",
        procedure_type=procedure,
        description=procedure.name[:64],
        study_instance_uid=generate_study_instance_uid(),
    )
    start = booking.scheduled_start
    ScheduledProcedureStep.objects.create(
        requested_procedure=requested,
        sps_id=f"S{next_number('sps'):09d}",
        modality=procedure.modality,
        station_ae_title=(room.station_ae_title or "") if room else "",
        station_name=room.station_name if room else "",
        room=room,
        scheduled_start=start,
        scheduled_end=start + dt.timedelta(minutes=procedure.default_duration_minutes),
        performing_physician_name=booking.performing_physician_name,
        description=procedure.name[:64],
    )
    if booking.referring_physician is not None:
        # The referring physician sees the orders they referred, and those patients.
        assign_perm("ris.view_order", booking.referring_physician, order)
        assign_perm("ris.view_patient", booking.referring_physician, booking.patient)
    audit.record(audit.Action.CREATE, order, **_audit_kwargs(actor, channel, source_address))
    return order


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
    order.status = Order.Status.ARRIVED
    order.save(update_fields=["status", "updated_at"])
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


@transaction.atomic
def cancel_order(
    order: Order,
    reason: str,
    *,
    actor: User | None = None,
    channel: str | None = audit.Channel.WEB,
    source_address: str = "",
) -> Order:
    """Cancel ORDER and take its open steps off the worklist; a performed exam stays."""
    order = Order.objects.select_for_update().get(pk=order.pk)
    if order.status not in (Order.Status.SCHEDULED, Order.Status.ARRIVED):
        raise ValidationError(
            f"Order {order.accession_number} is {order.get_status_display()}"
            " and cannot be cancelled."
        )
    if not reason.strip():
        raise ValidationError({"reason": "A cancellation needs a reason."})
    order.status = Order.Status.CANCELLED
    order.save(update_fields=["status", "updated_at"])
    RequestedProcedure.objects.filter(order=order).update(
        status=RequestedProcedure.Status.CANCELLED
    )
    ScheduledProcedureStep.objects.filter(
        requested_procedure__order=order, status__in=_OPEN_STEP_STATES
    ).update(status=ScheduledProcedureStep.Status.CANCELLED, updated_at=timezone.now())
    audit.record(
        audit.Action.UPDATE,
        order,
        detail=f"cancelled: {reason.strip()}",
        **_audit_kwargs(actor, channel, source_address),
    )
    return order
