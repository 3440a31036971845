"""The report as a PDF in the browser: for whoever may read the report, audited."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from core import audit
from reporting import distribution
from reporting.models import Report
from reporting.selectors import reports_visible_to


def _refuse(request: HttpRequest, report_id: int) -> None:
    audit.record(
        audit.Action.DENIED,
        request=request,
        outcome=audit.Outcome.FAILURE,
        object_type="reporting.report",
        object_id=str(report_id),
        detail="open the report PDF",
    )


@require_GET
def report_pdf(request: HttpRequest, report_id: int) -> HttpResponse:
    """Render the report as it stands now; 404 for a report this person may not read."""
    if not distribution.may_read_reports(request.user):
        _refuse(request, report_id)
        raise PermissionDenied("You may not read reports.")
    report = reports_visible_to(request.user).filter(pk=report_id).first()
    if report is None:
        hidden = Report.objects.select_related("order__patient").filter(pk=report_id).first()
        if hidden is not None:
            audit.record(
                audit.Action.DENIED,
                hidden,
                request=request,
                outcome=audit.Outcome.FAILURE,
                detail="open the report PDF",
            )
        raise Http404("No such report.")  # the same answer whether it exists or not
    pdf = distribution.render_pdf(report)
    audit.record(audit.Action.VIEW, report, request=request, detail="report PDF")
    response = HttpResponse(pdf, content_type="application/pdf")
    filename = distribution.safe_name(f"report-{report.order.accession_number}-{report.pk}.pdf")
    response["Content-Disposition"] = f'inline; filename="{filename}"'
    response["Cache-Control"] = "private, no-store"
    return response
