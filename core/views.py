"""Home (by role), the audit trail page, and the health endpoint."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_not_required, permission_required
from django.core.paginator import Paginator
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from core import audit, roles
from core.forms import AuditFilterForm
from core.models import WorkerHeartbeat
from core.selectors import AuditFilter, audit_events

# Where each role starts its day; the first role a user holds wins.
ROLE_HOME = (
    (roles.ADMINISTRATOR, "core:audit-list"),
    (roles.FRONT_DESK, "ris:today"),
    (roles.TECHNOLOGIST, "ris:exams-today"),
    (roles.RADIOLOGIST, "reporting:worklist"),
    (roles.TRANSCRIPTIONIST, "reporting:worklist"),
    (roles.REFERRING_PHYSICIAN, "ris:order-list"),
    (roles.PATIENT, "ris:my-record"),
)


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    for role, url_name in ROLE_HOME:
        if roles.has_role(request.user, role):
            return redirect(url_name)
    return render(request, "core/no_role.html", status=403)


@require_GET
@permission_required("core.view_auditevent", raise_exception=True)
def audit_list(request: HttpRequest) -> HttpResponse:
    form = AuditFilterForm(request.GET or None)
    if form.is_bound and not form.is_valid():
        return render(request, "core/audit_list.html", {"form": form, "page": None}, status=400)
    events = audit_events(form.criteria() if form.is_bound else AuditFilter())
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    # Render before recording this query, or the new row would shift the page being shown.
    response = render(request, "core/audit_list.html", {"form": form, "page": page})
    audit.record_query(
        request, "core.auditevent", count=page.paginator.count, criteria=request.GET.urlencode()
    )
    return response


@login_not_required
@never_cache
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """Answer whether the database is reachable and when a worker was last seen; no patient data."""
    checks: dict[str, str] = {}
    healthy = True
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # any database failure makes the service unhealthy
        checks["database"] = f"error: {type(exc).__name__}"
        healthy = False
    if settings.CELERY_TASK_ALWAYS_EAGER:
        checks["tasks"] = "in-process"
    elif healthy:
        beat = WorkerHeartbeat.objects.order_by("-seen_at").first()
        checks["tasks"] = "broker"
        checks["worker_last_seen"] = beat.seen_at.isoformat() if beat else "never"
    checks["time"] = timezone.now().isoformat()
    return JsonResponse(
        {"status": "ok" if healthy else "error", "checks": checks}, status=200 if healthy else 503
    )
