"""Reads of the RIS: the day's schedule, patient and order lists narrowed to what a user may see."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.db.models import BooleanField, ExpressionWrapper, Prefetch, Q, QuerySet
from django.utils import timezone

from core.permissions import visible
from ris.models import (
    Order,
    Patient,
    PatientIdentifier,
    RequestedProcedure,
    ScheduledProcedureStep,
)


def _day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = timezone.make_aware(dt.datetime.combine(day, dt.time.min))
    return start, start + dt.timedelta(days=1)


def steps_for_day(
    day: dt.date | None = None, *, room_id: int | None = None
) -> QuerySet[ScheduledProcedureStep]:
    """Steps starting on DAY (local time) with patient and procedure, less the cancelled ones."""
    start, end = _day_bounds(day or timezone.localdate())
    # Performed, yet no images matched to its order after EXAM_IMAGES_EXPECTED_MINUTES:
    # the technologist should look (images not sent, or sent under another identity).
    waited = timezone.now() - dt.timedelta(minutes=settings.EXAM_IMAGES_EXPECTED_MINUTES)
    images_overdue = Q(
        status=ScheduledProcedureStep.Status.COMPLETED,
        updated_at__lt=waited,
    ) & ~Q(requested_procedure__status=RequestedProcedure.Status.IMAGES_RECEIVED)
    steps = (
        ScheduledProcedureStep.objects.filter(scheduled_start__gte=start, scheduled_start__lt=end)
        .exclude(status=ScheduledProcedureStep.Status.CANCELLED)
        .annotate(images_overdue=ExpressionWrapper(images_overdue, output_field=BooleanField()))
        .select_related(
            "room",
            "requested_procedure__procedure_type",
            "requested_procedure__order__patient",
        )
        .order_by("scheduled_start", "id")
    )
    if room_id is not None:
        steps = steps.filter(room_id=room_id)
    return steps


def _with_identifiers(patients: QuerySet[Patient]) -> QuerySet[Patient]:
    primary = PatientIdentifier.objects.filter(is_alias=False).select_related("issuer")
    return patients.prefetch_related(Prefetch("identifiers", queryset=primary))


def patients_visible_to(user: Any, query: str = "") -> QuerySet[Patient]:
    """Active patients USER may see (role or grant) matching QUERY by name or identifier."""
    patients = visible(user, "ris.view_patient", Patient.objects.filter(merged_into__isnull=True))
    query = query.strip()
    if query:
        patients = patients.filter(
            Q(family_name__icontains=query)
            | Q(given_name__icontains=query)
            | Q(identifiers__value__iexact=query)
        ).distinct()
    return _with_identifiers(patients)


def orders_visible_to(user: Any) -> QuerySet[Order]:
    """Orders USER may see: all of them with the role, else only those granted (their referrals)."""
    orders = visible(user, "ris.view_order", Order.objects.all())
    return orders.select_related("patient").prefetch_related(
        "requested_procedures__procedure_type", "requested_procedures__steps"
    )


def patient_orders(patient: Patient) -> QuerySet[Order]:
    return (
        Order.objects.filter(patient=patient)
        .prefetch_related("requested_procedures__procedure_type", "requested_procedures__steps")
        .order_by("-ordered_at")
    )
