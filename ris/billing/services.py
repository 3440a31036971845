"""Writes of billing: capture charges from completed exams, post, void, and keep coverage.

Capture runs inside the transaction that completes the exam (a receiver of
ris.signals.order_status_changed), so an exam is completed exactly when its charge
exists. Posting writes the DFT^P03 to the HL7 outbox in the same transaction.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from core import audit
from ris.billing.models import MODIFIER_DISCONTINUED, Charge, Coverage
from ris.hl7 import builders, outbox
from ris.hl7.models import OutboundMessage
from ris.models import Order, Patient, RequestedProcedure, ScheduledProcedureStep

# Requested procedures that were performed, once their order is completed.
BILLABLE_PROCEDURE_STATES = (
    RequestedProcedure.Status.COMPLETED,
    RequestedProcedure.Status.IMAGES_RECEIVED,
    RequestedProcedure.Status.PRELIMINARY_REPORT,
    RequestedProcedure.Status.REPORTED,
)
_PERFORMED_STEP_STATES = (
    ScheduledProcedureStep.Status.COMPLETED,
    ScheduledProcedureStep.Status.DISCONTINUED,
)
MAX_MODIFIERS = 4  # FT1-26 / CMS-1500 24D carry at most four
MAX_QUANTITY = 99


def currency() -> str:
    return str(settings.BILLING_CURRENCY)


def _audit_kwargs(actor: User | None, channel: str | None, source_address: str) -> dict[str, Any]:
    return {"actor": actor, "channel": channel, "source_address": source_address}


# ---------------------------------------------------------------- capture


def _performed(requested: RequestedProcedure) -> tuple[dt.datetime, bool]:
    """Return when REQUESTED was last worked on, and whether every performed step was stopped."""
    steps = list(requested.steps.filter(status__in=_PERFORMED_STEP_STATES))
    ended = max((step.updated_at for step in steps), default=None) or timezone.now()
    discontinued = bool(steps) and all(
        step.status == ScheduledProcedureStep.Status.DISCONTINUED for step in steps
    )
    return ended, discontinued


def _new_charge(order: Order, requested: RequestedProcedure) -> Charge:
    procedure = requested.procedure_type
    performed_at, discontinued = _performed(requested)
    unit_price = Decimal(procedure.price)
    return Charge.objects.create(
        order=order,
        requested_procedure=requested,
        patient_id=order.patient_id,
        procedure_type=procedure,
        procedure_code=procedure.cpt_code.strip(),
        description=procedure.name[:200],
        modifiers=MODIFIER_DISCONTINUED if discontinued else "",
        quantity=1,
        unit_price=unit_price,
        amount=unit_price,
        currency=currency(),
        performed_at=performed_at,
        referring_physician_name=order.referring_physician_name,
        modality=procedure.modality,
    )


@transaction.atomic
def capture_charges(
    order: Order,
    *,
    actor: User | None = None,
    channel: str | None = audit.Channel.SYSTEM,
    source_address: str = "",
) -> list[Charge]:
    """Create the charge of each performed procedure of completed ORDER that has none yet."""
    if order.status != Order.Status.COMPLETED:
        return []
    # A requested procedure with any charge, even a voided one, was billed already: a
    # person voided it on purpose, and `recapture_charge` bills it again.
    requested = (
        RequestedProcedure.objects.filter(order=order, status__in=BILLABLE_PROCEDURE_STATES)
        .exclude(charges__isnull=False)
        .select_related("procedure_type")
        .order_by("pk")
    )
    created = [_new_charge(order, rp) for rp in requested]
    for charge in created:
        audit.record(
            audit.Action.CREATE,
            charge,
            detail=f"charge captured: {charge.procedure_code or 'no CPT code'} {charge.amount}",
            **_audit_kwargs(actor, channel, source_address),
        )
    return created


def capture_missing_charges(
    *,
    actor: User | None = None,
    channel: str | None = audit.Channel.SYSTEM,
    source_address: str = "",
) -> list[Charge]:
    """Capture the charges of every completed exam that has none: the sweep behind the flag."""
    from ris.billing.selectors import exams_without_charge

    order_ids = sorted(set(exams_without_charge().values_list("order_id", flat=True)))
    created: list[Charge] = []
    for order_id in order_ids:
        with transaction.atomic():
            order = Order.objects.select_for_update().get(pk=order_id)
            created += capture_charges(
                order, actor=actor, channel=channel, source_address=source_address
            )
    return created


@transaction.atomic
def recapture_charge(
    charge: Charge,
    *,
    actor: User | None = None,
    channel: str | None = audit.Channel.WEB,
    source_address: str = "",
) -> Charge:
    """Bill the procedure of voided CHARGE again, from the catalogue as it is now."""
    charge = Charge.objects.select_for_update().select_related("order").get(pk=charge.pk)
    if charge.status != Charge.Status.VOID:
        raise ValidationError("Only a voided charge can be captured again.")
    live = Charge.objects.filter(requested_procedure_id=charge.requested_procedure_id)
    if live.exclude(status=Charge.Status.VOID).exists():
        raise ValidationError("This exam already has a live charge.")
    requested = RequestedProcedure.objects.select_related("procedure_type").get(
        pk=charge.requested_procedure_id
    )
    new = _new_charge(charge.order, requested)
    audit.record(
        audit.Action.CREATE,
        new,
        detail=f"charge captured again after void of charge {charge.pk}",
        **_audit_kwargs(actor, channel, source_address),
    )
    return new


@transaction.atomic
def flag_cancelled_order(order: Order) -> int:
    """Mark ORDER's live charges for review: the exam was cancelled after it was charged."""
    return (
        Charge.objects.filter(order=order, order_cancelled_at__isnull=True)
        .exclude(status=Charge.Status.VOID)
        .update(order_cancelled_at=timezone.now())
    )


@transaction.atomic
def move_to_survivor(survivor: Patient, merged: Patient) -> None:
    """Follow a patient merge: charges and coverage of MERGED now belong to SURVIVOR."""
    Charge.objects.filter(patient=merged).update(patient=survivor)
    Coverage.objects.filter(patient=merged).update(patient=survivor)


# ---------------------------------------------------------------- adjust, post, void


@transaction.atomic
def adjust_charge(
    charge: Charge,
    *,
    quantity: int,
    modifiers: str,
    actor: User | None = None,
    channel: str | None = audit.Channel.WEB,
    source_address: str = "",
) -> list[str]:
    """Change the quantity and modifiers of pending CHARGE; return what really changed."""
    charge = Charge.objects.select_for_update().get(pk=charge.pk)
    if charge.status != Charge.Status.PENDING:
        raise ValidationError(f"Charge {charge.pk} is {charge.get_status_display()}, not pending.")
    if not 1 <= quantity <= MAX_QUANTITY:
        raise ValidationError({"quantity": f"The quantity is 1 to {MAX_QUANTITY}."})
    codes = [code.strip().upper() for code in modifiers.replace(" ", ",").split(",")]
    codes = [code for code in codes if code]
    if len(codes) > MAX_MODIFIERS or any(len(code) != 2 or not code.isalnum() for code in codes):
        raise ValidationError(
            {"modifiers": f"At most {MAX_MODIFIERS} two-character modifiers, e.g. 26,TC."}
        )
    changes = {"quantity": quantity, "modifiers": ",".join(codes)}
    changed = [name for name, value in changes.items() if getattr(charge, name) != value]
    if not changed:
        return []
    for name in changed:
        setattr(charge, name, changes[name])
    charge.amount = charge.unit_price * charge.quantity
    charge.save(update_fields=[*changed, "amount"])
    audit.record(
        audit.Action.UPDATE,
        charge,
        detail="changed: " + ", ".join(f"{name}={changes[name]}" for name in changed),
        **_audit_kwargs(actor, channel, source_address),
    )
    return changed


def _charge_line(charge: Charge, *, credit: bool = False) -> builders.ChargeLine:
    # A credit reverses the posted line: transaction type CD (HL7 table 0017) with the
    # quantity and amounts negated, under the same transaction id.
    sign = -1 if credit else 1
    return builders.ChargeLine(
        transaction_id=charge.transaction_id,
        performed_at=charge.performed_at,
        procedure_code=charge.procedure_type.code,  # FT1-7: our chargemaster code
        procedure_name=charge.description,
        quantity=sign * charge.quantity,
        amount=sign * charge.amount,
        unit_amount=sign * charge.unit_price,
        currency=charge.currency,
        accession_number=charge.order.accession_number,
        cpt_code=charge.procedure_code,  # FT1-25
        modifiers=[m.strip() for m in charge.modifiers.split(",") if m.strip()],  # FT1-26
        transaction_type=builders.CREDIT if credit else builders.CHARGE,
        ordered_by=builders.Person.from_dicom_name(charge.referring_physician_name),
    )


def _send(patient: Patient, lines: Sequence[builders.ChargeLine]) -> OutboundMessage | None:
    """Queue one DFT^P03 with LINES for PATIENT; return the first row (None: no destination)."""
    rows = outbox.enqueue_charges(patient, lines)
    return rows[0] if rows else None


@dataclass
class PostResult:
    posted: list[Charge] = field(default_factory=list)
    messages: list[OutboundMessage] = field(default_factory=list)
    # Charges posted while no destination takes DFT: recorded as posted, nothing sent.
    unsent: list[Charge] = field(default_factory=list)


@transaction.atomic
def post_charges(
    charge_ids: Iterable[int],
    *,
    actor: User | None = None,
    channel: str | None = audit.Channel.WEB,
    source_address: str = "",
) -> PostResult:
    """Post the pending charges CHARGE_IDS: one DFT^P03 per patient, queued with the change."""
    ids = sorted({int(pk) for pk in charge_ids})
    if not ids:
        raise ValidationError("Select the charges to post.")
    locked = list(
        Charge.objects.select_for_update(of=("self",))
        .filter(pk__in=ids)
        .select_related("order", "procedure_type", "patient")
        .order_by("pk")
    )
    missing = sorted(set(ids) - {charge.pk for charge in locked})
    if missing:
        raise ValidationError(f"No charge {', '.join(map(str, missing))}.")
    refused = [charge for charge in locked if charge.status != Charge.Status.PENDING]
    if refused:
        raise ValidationError(
            "; ".join(
                f"charge {charge.pk} is {charge.get_status_display()}, not pending"
                for charge in refused
            )
        )
    now = timezone.now()
    result = PostResult()
    by_patient: dict[int, list[Charge]] = defaultdict(list)
    for charge in locked:
        by_patient[charge.patient_id].append(charge)
    for charges in by_patient.values():
        message = _send(charges[0].patient, [_charge_line(charge) for charge in charges])
        if message is not None:
            result.messages.append(message)
        else:
            result.unsent += charges
        Charge.objects.filter(pk__in=[charge.pk for charge in charges]).update(
            status=Charge.Status.POSTED,
            posted_at=now,
            posted_by=actor,
            posted_message=message,
            posted_control_id=message.control_id if message else "",
        )
        for charge in charges:
            charge.status, charge.posted_at, charge.posted_by = Charge.Status.POSTED, now, actor
            charge.posted_message = message
            charge.posted_control_id = message.control_id if message else ""
            sent = f"DFT^P03 {message.control_id}" if message else "no destination takes DFT"
            audit.record(
                audit.Action.UPDATE,
                charge,
                detail=f"charge posted ({sent})",
                **_audit_kwargs(actor, channel, source_address),
            )
        result.posted += charges
    return result


@transaction.atomic
def void_charge(
    charge: Charge,
    reason: str,
    *,
    actor: User | None = None,
    channel: str | None = audit.Channel.WEB,
    source_address: str = "",
) -> Charge:
    """Void CHARGE for REASON; a posted one is credited to the billing system by DFT^P03."""
    if not reason.strip():
        raise ValidationError({"reason": "Voiding a charge needs a reason."})
    charge = (
        Charge.objects.select_for_update(of=("self",))
        .select_related("order", "procedure_type", "patient")
        .get(pk=charge.pk)
    )
    if charge.status == Charge.Status.VOID:
        raise ValidationError(f"Charge {charge.pk} is void already.")
    # Only what the billing system was sent is credited there.
    was_sent = charge.status == Charge.Status.POSTED and bool(charge.posted_control_id)
    if was_sent:
        charge.void_message = _send(charge.patient, [_charge_line(charge, credit=True)])
        charge.void_control_id = charge.void_message.control_id if charge.void_message else ""
    charge.status = Charge.Status.VOID
    charge.voided_at = timezone.now()
    charge.voided_by = actor
    charge.void_reason = reason.strip()
    charge.save(
        update_fields=[
            "status",
            "voided_at",
            "voided_by",
            "void_reason",
            "void_message",
            "void_control_id",
        ]
    )
    credit = ""
    if was_sent:
        credit = (
            f" (credit DFT^P03 {charge.void_message.control_id})"
            if charge.void_message
            else " (no destination takes DFT: no credit sent)"
        )
    audit.record(
        audit.Action.UPDATE,
        charge,
        detail=f"charge voided: {charge.void_reason}{credit}",
        **_audit_kwargs(actor, channel, source_address),
    )
    return charge


# ---------------------------------------------------------------- coverage


COVERAGE_FIELDS = (
    "priority",
    "payer_name",
    "plan_name",
    "policy_number",
    "group_number",
    "subscriber_name",
    "subscriber_relationship",
    "valid_from",
    "valid_to",
)


def _overlaps(coverage: Coverage) -> bool:
    """Tell whether another coverage of the patient, of the same priority, overlaps COVERAGE."""
    others = Coverage.objects.filter(patient_id=coverage.patient_id, priority=coverage.priority)
    if coverage.pk:
        others = others.exclude(pk=coverage.pk)
    far_past, far_future = dt.date.min, dt.date.max
    start, end = coverage.valid_from or far_past, coverage.valid_to or far_future
    return any(
        (other.valid_from or far_past) <= end and start <= (other.valid_to or far_future)
        for other in others
    )


@transaction.atomic
def save_coverage(
    patient: Patient,
    data: dict[str, Any],
    *,
    coverage: Coverage | None = None,
    actor: User | None = None,
    channel: str | None = audit.Channel.WEB,
    source_address: str = "",
) -> Coverage:
    """Add a coverage to PATIENT, or change COVERAGE, from DATA (the COVERAGE_FIELDS)."""
    unknown = sorted(set(data) - set(COVERAGE_FIELDS))
    if unknown:
        raise ValidationError(dict.fromkeys(unknown, "This field cannot be set here."))
    if coverage is not None:
        coverage = Coverage.objects.select_for_update().get(pk=coverage.pk, patient=patient)
        changed = [name for name, value in data.items() if getattr(coverage, name) != value]
    else:
        coverage = Coverage(patient=patient)
        changed = list(data)
    for name, value in data.items():
        setattr(coverage, name, value)
    coverage.full_clean(exclude=["patient"])
    if _overlaps(coverage):
        raise ValidationError(
            {
                "priority": f"{patient} already has a {coverage.get_priority_display().lower()} "
                "coverage for part of these dates."
            }
        )
    creating = coverage.pk is None
    if not creating and not changed:
        return coverage
    coverage.save()
    audit.record(
        audit.Action.CREATE if creating else audit.Action.UPDATE,
        coverage,
        detail=f"coverage {'added' if creating else 'changed: ' + ', '.join(changed)}",
        **_audit_kwargs(actor, channel, source_address),
    )
    return coverage


@transaction.atomic
def delete_coverage(
    coverage: Coverage,
    *,
    actor: User | None = None,
    channel: str | None = audit.Channel.WEB,
    source_address: str = "",
) -> None:
    """Remove COVERAGE from its patient."""
    audit.record(
        audit.Action.DELETE,
        coverage,
        detail=f"coverage removed: {coverage}",
        **_audit_kwargs(actor, channel, source_address),
    )
    coverage.delete()
