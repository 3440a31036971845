"""Reads of reporting: the reading worklist."""

from __future__ import annotations

from django.db.models import Case, Exists, IntegerField, OuterRef, QuerySet, Value, When

from pacs.models import Study
from reporting.models import Report
from ris.models import Priority

_SIGNED = (Report.Status.FINAL, Report.Status.AMENDED)


def studies_awaiting_reading() -> QuerySet[Study]:
    """Received studies without a final report: STAT first, then oldest first."""
    signed = Report.objects.filter(study=OuterRef("pk"), status__in=_SIGNED)
    urgency = Case(
        When(requested_procedure__order__priority=Priority.STAT, then=Value(0)),
        When(requested_procedure__order__priority=Priority.URGENT, then=Value(1)),
        default=Value(2),
        output_field=IntegerField(),
    )
    return (
        Study.objects.filter(~Exists(signed))
        .annotate(urgency=urgency)
        .select_related("patient", "requested_procedure__order")
        .order_by("urgency", "received_at", "id")
    )
