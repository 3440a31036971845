"""Reporting pages; the reading worklist is a plain list until the reporting issue adds claims."""

from __future__ import annotations

from django.contrib.auth.decorators import permission_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from core import audit
from reporting.selectors import studies_awaiting_reading


@require_GET
@permission_required("reporting.view_report", raise_exception=True)
def worklist(request: HttpRequest) -> HttpResponse:
    page = Paginator(studies_awaiting_reading(), 50).get_page(request.GET.get("page"))
    audit.record_query(
        request, "pacs.study", count=page.paginator.count, criteria="awaiting reading"
    )
    return render(request, "reporting/worklist.html", {"page": page})
