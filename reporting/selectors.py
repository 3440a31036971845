"""Reads of reporting: the reading worklist, the queues, reports visible to a person, turnaround."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import User
from django.db.models import (
    Avg,
    Case,
    Count,
    DurationField,
    Exists,
    ExpressionWrapper,
    F,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Coalesce, Now, TruncDate
from guardian.shortcuts import get_objects_for_user

from core import roles
from core.permissions import can
from pacs.models import Study
from reporting.models import Dictation, ReadingClaim, Report
from ris.models import Order, Priority

_SIGNED = (Report.Status.FINAL, Report.Status.AMENDED)
# What people outside the reading room see: signed reports only, never drafts.
_RELEASED = (Report.Status.PRELIMINARY, Report.Status.FINAL, Report.Status.AMENDED)


@dataclass(frozen=True)
class WorklistFilter:
    modality: str = ""
    body_part: str = ""
    referring: str = ""
    date_from: dt.date | None = None
    date_to: dt.date | None = None

    def described(self) -> str:
        """The criteria given, as "name=value" pairs for the audit trail."""
        return " ".join(
            f"{name}={value}" for name, value in vars(self).items() if value not in ("", None)
        )


def _urgency() -> Case:
    return Case(
        When(requested_procedure__order__priority=Priority.STAT, then=Value(0)),
        When(requested_procedure__order__priority=Priority.URGENT, then=Value(1)),
        default=Value(2),
        output_field=IntegerField(),
    )


def live_claims() -> QuerySet[ReadingClaim]:
    """Claims neither released nor expired."""
    return ReadingClaim.objects.filter(released_at__isnull=True, expires_at__gt=Now())


def studies_awaiting_reading(filters: WorklistFilter | None = None) -> QuerySet[Study]:
    """Received studies of an order without a final report: STAT first, then oldest first.

    Each row carries the number of the patient's other studies, who holds the claim, and
    the report's status, in the one query.
    """
    signed = Report.objects.filter(study=OuterRef("pk"), status__in=_SIGNED)
    priors = (
        Study.objects.filter(patient=OuterRef("patient"))
        .exclude(pk=OuterRef("pk"))
        .order_by()
        .values("patient")
        .annotate(count=Count("pk"))
        .values("count")
    )
    claim = live_claims().filter(study=OuterRef("pk"))
    report = Report.objects.filter(study=OuterRef("pk"))
    studies = (
        Study.objects.filter(~Exists(signed), requested_procedure__isnull=False)
        .annotate(
            urgency=_urgency(),
            prior_count=Coalesce(Subquery(priors, output_field=IntegerField()), Value(0)),
            claimant_id=Subquery(claim.values("radiologist_id")[:1]),
            claimant_name=Subquery(claim.values("radiologist__username")[:1]),
            claim_expires_at=Subquery(claim.values("expires_at")[:1]),
            report_id=Subquery(report.values("pk")[:1]),
            report_status=Subquery(report.values("status")[:1]),
        )
        .select_related(
            "patient",
            "requested_procedure__order",
            "requested_procedure__procedure_type",
        )
        .order_by("urgency", "received_at", "id")
    )
    if filters is not None:
        studies = studies.filter(_worklist_conditions(filters))
    return studies


def _worklist_conditions(filters: WorklistFilter) -> Q:
    conditions = Q()
    if filters.modality:
        # modalities_in_study is backslash-delimited on both ends: "\CT\SR\".
        conditions &= Q(modalities_in_study__icontains=f"\\{filters.modality.strip()}\\")
    if filters.body_part:
        conditions &= Q(
            requested_procedure__procedure_type__body_part__icontains=filters.body_part.strip()
        )
    if filters.referring:
        text = filters.referring.strip()
        conditions &= Q(referring_physician_name__icontains=text) | Q(
            requested_procedure__order__referring_physician_name__icontains=text
        )
    if filters.date_from:
        conditions &= Q(study_date__gte=filters.date_from)
    if filters.date_to:
        conditions &= Q(study_date__lte=filters.date_to)
    return conditions


def radiologists() -> QuerySet[User]:
    """Active members of the radiologist role, for reassigning a reading."""
    return User.objects.filter(groups__name=roles.RADIOLOGIST, is_active=True).order_by("username")


def live_claim(study: Study) -> ReadingClaim | None:
    return live_claims().filter(study=study).select_related("radiologist").first()


def patient_studies(study: Study) -> QuerySet[Study]:
    """The patient's other studies, newest first, with their report's status."""
    report = Report.objects.filter(study=OuterRef("pk"))
    return (
        Study.objects.filter(patient_id=study.patient_id)
        .exclude(pk=study.pk)
        .annotate(
            report_id=Subquery(report.values("pk")[:1]),
            report_status=Subquery(report.values("status")[:1]),
        )
        .order_by(F("study_date").desc(nulls_last=True), "-id")
    )


def prior_reports(report: Report) -> QuerySet[Report]:
    """The signed reports of the same patient, newest first, other than REPORT."""
    return (
        Report.objects.filter(order__patient_id=report.order.patient_id, status__in=_RELEASED)
        .exclude(pk=report.pk)
        .select_related("order", "study", "signed_by")
        .prefetch_related("addenda__signed_by")
        .order_by("-signed_at", "-id")
    )


def _granted_orders(user: Any) -> QuerySet[Order]:
    # Object grants only: a role-wide ris.view_order (front desk) opens no report.
    return get_objects_for_user(user, "ris.view_order", klass=Order, accept_global_perms=False)


def reports_visible_to(user: Any) -> QuerySet[Report]:
    """Reports USER may read: all with the reporting role, else signed ones of their orders."""
    if not user.is_authenticated or not user.is_active:
        return Report.objects.none()
    reports = Report.objects.all()
    if not can(user, "reporting.view_report"):
        # Their referrals (an object grant on the order), and a patient's own record.
        reports = reports.filter(
            Q(order__in=_granted_orders(user).values("pk")) | Q(order__patient__user=user),
            status__in=_RELEASED,
        )
    return reports.select_related("order__patient", "study", "signed_by", "author")


def signed_reports_visible_to(user: Any) -> QuerySet[Report]:
    """Signed reports USER may read, the latest signature first."""
    return (
        reports_visible_to(user)
        .filter(status__in=_RELEASED)
        .order_by(F("signed_at").desc(nulls_last=True), "-id")
    )


def transcription_queue() -> QuerySet[Report]:
    """Reports with a dictation waiting to be typed, oldest first."""
    return (
        Report.objects.filter(
            transcription=Report.Transcription.DICTATED,
            status__in=(Report.Status.DRAFT, Report.Status.PRELIMINARY),
        )
        .annotate(
            dictation_count=Count("dictations"),
            dictated_at=Subquery(
                Dictation.objects.filter(report=OuterRef("pk"))
                .order_by("-uploaded_at")
                .values("uploaded_at")[:1]
            ),
        )
        .select_related("order__patient", "study", "author")
        .order_by("dictated_at", "id")
    )


def unacknowledged_critical(user: Any) -> QuerySet[Report]:
    """Signed reports with a critical finding nobody of the referring team acknowledged yet."""
    return (
        reports_visible_to(user)
        .filter(critical=True, critical_acknowledged_at__isnull=True, status__in=_RELEASED)
        .select_related("critical_flagged_by")
        .order_by("critical_flagged_at", "id")
    )


def _interval(later: str, earlier: str) -> ExpressionWrapper:
    return ExpressionWrapper(F(later) - F(earlier), output_field=DurationField())


@dataclass(frozen=True)
class Turnaround:
    key: str
    reports: int
    order_to_exam: dt.timedelta | None
    exam_to_preliminary: dt.timedelta | None
    exam_to_final: dt.timedelta | None


def turnaround(since: dt.datetime, group_by: str) -> list[Turnaround]:
    """Mean times of reports signed since SINCE, per modality or per radiologist (GROUP_BY).

    The exam is when its images arrived (the study's first instance).
    """
    key = {
        "modality": "study__requested_procedure__procedure_type__modality",
        "radiologist": "signed_by__username",
    }[group_by]
    rows = (
        Report.objects.filter(study__isnull=False, signed_at__gte=since)
        .values(key)
        .annotate(
            reports=Count("pk"),
            order_to_exam=Avg(_interval("study__received_at", "order__ordered_at")),
            exam_to_preliminary=Avg(_interval("preliminary_at", "study__received_at")),
            exam_to_final=Avg(_interval("finalized_at", "study__received_at")),
        )
        .order_by(key)
    )
    return [
        Turnaround(
            key=row[key] or "—",
            reports=row["reports"],
            order_to_exam=row["order_to_exam"],
            exam_to_preliminary=row["exam_to_preliminary"],
            exam_to_final=row["exam_to_final"],
        )
        for row in rows
    ]


def workload(since: dt.datetime) -> list[dict[str, Any]]:
    """Reports signed final per radiologist per day (local days) since SINCE."""
    return list(
        Report.objects.filter(finalized_at__gte=since, signed_by__isnull=False)
        .annotate(day=TruncDate("finalized_at"))
        .values("day", radiologist=F("signed_by__username"))
        .annotate(reports=Count("pk"))
        .order_by("day", "radiologist")
    )
