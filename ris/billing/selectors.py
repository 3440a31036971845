"""Reads of billing: the charge list and its filters, review flags, totals, coverage."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, Exists, OuterRef, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from ris.billing.models import Charge, Coverage
from ris.billing.services import BILLABLE_PROCEDURE_STATES
from ris.models import Order, Patient, RequestedProcedure

# Review flags a charge may carry; the list filters on them by these names.
FLAG_NO_CPT = "no_cpt"
FLAG_NO_COVERAGE = "no_coverage"
FLAG_CANCELLED = "cancelled"
FLAGS = {
    FLAG_NO_CPT: "Procedure without CPT code",
    FLAG_NO_COVERAGE: "Patient without coverage",
    FLAG_CANCELLED: "Exam cancelled after charge",
}


@dataclass(frozen=True)
class ChargeFilter:
    status: str = ""  # one of Charge.Status, or "" for every status
    date_from: dt.date | None = None  # performed on or after, local date
    date_to: dt.date | None = None  # performed on or before, local date
    procedure: str = ""  # a procedure code or CPT code, or part of the name
    flag: str = ""  # one of FLAGS


def _day_start(day: dt.date) -> dt.datetime:
    return timezone.make_aware(dt.datetime.combine(day, dt.time.min))


def _with_coverage(charges: QuerySet[Charge]) -> QuerySet[Charge]:
    """Set `covered`: the charge's patient had a coverage valid on the day of the exam."""
    day = OuterRef("performed_day")
    covered = Exists(
        Coverage.objects.filter(patient_id=OuterRef("patient_id"))
        .filter(Q(valid_from__isnull=True) | Q(valid_from__lte=day))
        .filter(Q(valid_to__isnull=True) | Q(valid_to__gte=day))
    )
    tz = timezone.get_current_timezone()
    return charges.annotate(performed_day=TruncDate("performed_at", tzinfo=tz)).annotate(
        covered=covered
    )


def _in_period(charges: QuerySet[Charge], criteria: ChargeFilter) -> QuerySet[Charge]:
    """Narrow CHARGES to CRITERIA's dates and procedure (not its status or flag)."""
    if criteria.date_from:
        charges = charges.filter(performed_at__gte=_day_start(criteria.date_from))
    if criteria.date_to:
        charges = charges.filter(
            performed_at__lt=_day_start(criteria.date_to + dt.timedelta(days=1))
        )
    text = criteria.procedure.strip()
    if text:
        charges = charges.filter(
            Q(procedure_code__iexact=text)
            | Q(procedure_type__code__iexact=text)
            | Q(description__icontains=text)
        )
    return charges


def _flagged(charges: QuerySet[Charge], flag: str) -> QuerySet[Charge]:
    if flag == FLAG_NO_CPT:
        return charges.filter(procedure_code="")
    if flag == FLAG_NO_COVERAGE:
        return charges.filter(covered=False)  # type: ignore[misc]  # annotated by _with_coverage
    if flag == FLAG_CANCELLED:
        return charges.filter(order_cancelled_at__isnull=False)
    return charges


def charges(criteria: ChargeFilter) -> QuerySet[Charge]:
    """The charges matching CRITERIA, newest exam first, each with `covered` set."""
    rows = _with_coverage(
        Charge.objects.select_related("order", "patient", "posted_by", "voided_by")
    ).order_by("-performed_at", "-id")
    rows = _in_period(rows, criteria)
    if criteria.status:
        rows = rows.filter(status=criteria.status)
    return _flagged(rows, criteria.flag)


def status_counts(criteria: ChargeFilter) -> dict[str, int]:
    """How many charges of the period are in each status, in one query."""
    period = _in_period(Charge.objects.all(), criteria)
    counts = period.aggregate(
        **{status: Count("pk", filter=Q(status=status)) for status in Charge.Status.values}
    )
    return {status: int(counts[status] or 0) for status in Charge.Status.values}


def review_counts(criteria: ChargeFilter) -> dict[str, int]:
    """How many live charges of the period carry each review flag, in one query."""
    live = _with_coverage(
        _in_period(Charge.objects.all(), criteria).exclude(status=Charge.Status.VOID)
    )
    counts = live.aggregate(
        no_cpt=Count("pk", filter=Q(procedure_code="")),
        no_coverage=Count("pk", filter=Q(covered=False)),
        cancelled=Count("pk", filter=Q(order_cancelled_at__isnull=False)),
    )
    return {flag: int(counts[flag] or 0) for flag in FLAGS}


def exams_without_charge() -> QuerySet[RequestedProcedure]:
    """Performed procedures of completed orders that were never charged (not even voided)."""
    return (
        RequestedProcedure.objects.filter(
            order__status=Order.Status.COMPLETED, status__in=BILLABLE_PROCEDURE_STATES
        )
        .exclude(Exists(Charge.objects.filter(requested_procedure_id=OuterRef("pk"))))
        .select_related("order__patient", "procedure_type")
        .order_by("order__updated_at", "pk")
    )


def _totals(criteria: ChargeFilter, *group: Any, **named: Any) -> list[dict[str, Any]]:
    """Count and sum the live charges of the period, grouped by GROUP, in one query."""
    live = _in_period(Charge.objects.exclude(status=Charge.Status.VOID), criteria)
    if criteria.status and criteria.status != Charge.Status.VOID:
        live = live.filter(status=criteria.status)
    if named:
        live = live.annotate(**named)
    keys = [*group, *named]
    return list(live.values(*keys).annotate(count=Count("pk"), total=Sum("amount")).order_by(*keys))


def totals_by_day(criteria: ChargeFilter) -> list[dict[str, Any]]:
    """Live charges per local day of the exam: day, count, total."""
    return _totals(criteria, day=TruncDate("performed_at", tzinfo=timezone.get_current_timezone()))


def totals_by_modality(criteria: ChargeFilter) -> list[dict[str, Any]]:
    """Live charges per modality: modality, count, total."""
    return _totals(criteria, "modality")


def totals_by_referrer(criteria: ChargeFilter) -> list[dict[str, Any]]:
    """Live charges per referring physician: referring_physician_name, count, total."""
    return _totals(criteria, "referring_physician_name")


def coverages_of(patient: Patient) -> QuerySet[Coverage]:
    return Coverage.objects.filter(patient=patient).order_by("priority", "-valid_from", "id")
