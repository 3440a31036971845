"""Reporting pages: the reading worklist and claims, the editor, dictation, transcription,
signing and addenda, critical findings, and turnaround for administrators.

Who may read a report is `selectors.reports_visible_to`: a report out of sight answers
404, the same as one that does not exist, and the refusal is audited.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db.models import F
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    JsonResponse,
)
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from core import audit, roles
from core.audit import client_address
from core.permissions import acting_user, can
from pacs.models import Study
from reporting import selectors, services
from reporting.forms import (
    AddendumForm,
    DictationForm,
    PasswordForm,
    ReassignForm,
    ReportTextForm,
    SignForm,
    WorklistFilterForm,
)
from reporting.models import Addendum, Dictation, Report

PAGE_SIZE = 50
PRIORS_SHOWN = 10
TURNAROUND_DAYS = 30
CHART_WIDTH = 420  # pixels of the longest bar
CHART_LABEL_WIDTH = 200


def _errors(exc: ValidationError) -> str:
    return " ".join(exc.messages)


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _study(pk: int) -> Study:
    return get_object_or_404(Study.objects.select_related("patient"), pk=pk)


@require_GET
@permission_required("reporting.view_report", raise_exception=True)
def worklist(request: HttpRequest) -> HttpResponse:
    """Studies waiting to be read, STAT first, with who reads each and the patient's priors."""
    form = WorklistFilterForm(request.GET or None)
    if form.is_bound and not form.is_valid():
        return render(request, "reporting/worklist.html", {"form": form, "page": None}, status=400)
    criteria = form.criteria() if form.is_bound else selectors.WorklistFilter()
    page = Paginator(selectors.studies_awaiting_reading(criteria), PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    may_reassign = can(request.user, "reporting.reassign_readingclaim")
    context = {
        "form": form,
        "page": page,
        "may_claim": can(request.user, "reporting.sign_report"),
        "may_reassign": may_reassign,
        "radiologists": list(selectors.radiologists()) if may_reassign else [],
        "may_transcribe": can(request.user, "reporting.transcribe_report"),
    }
    response = render(request, "reporting/worklist.html", context)
    audit.record_query(
        request,
        "pacs.study",
        count=page.paginator.count,
        criteria=f"awaiting reading {criteria.described()}".strip(),
    )
    return response


@require_POST
@permission_required("reporting.sign_report", raise_exception=True)
def claim(request: HttpRequest, pk: int) -> HttpResponse:
    """Claim a study to read it and open its report."""
    study = _study(pk)
    user = acting_user(request)
    try:
        services.claim_study(study, user, source_address=client_address(request))
        report = services.start_report(study, user, source_address=client_address(request))
    except ValidationError as exc:
        messages.error(request, _errors(exc))
        return redirect("reporting:worklist")
    return redirect("reporting:report", pk=report.pk)


@require_POST
@permission_required("reporting.view_readingclaim", raise_exception=True)
def release(request: HttpRequest, pk: int) -> HttpResponse:
    study = _study(pk)
    try:
        services.release_claim(study, acting_user(request), source_address=client_address(request))
    except ValidationError as exc:
        messages.error(request, _errors(exc))
    else:
        messages.success(request, f"Released {study.accession_number or 'the study'}.")
    return redirect("reporting:worklist")


@require_POST
@permission_required("reporting.reassign_readingclaim", raise_exception=True)
def reassign(request: HttpRequest, pk: int) -> HttpResponse:
    study = _study(pk)
    form = ReassignForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a radiologist.")
        return redirect("reporting:worklist")
    radiologist: User = form.cleaned_data["radiologist"]
    try:
        services.reassign_claim(
            study, radiologist, actor=acting_user(request), source_address=client_address(request)
        )
    except ValidationError as exc:
        messages.error(request, _errors(exc))
    else:
        messages.success(
            request, f"{study.accession_number or 'The study'} is now read by {radiologist}."
        )
    return redirect("reporting:worklist")


def _report_for(request: HttpRequest, pk: int) -> Report:
    """The report PK if this person may read it; else 404, audited when it exists."""
    report = selectors.reports_visible_to(request.user).filter(pk=pk).first()
    if report is None:
        denied = Report.objects.filter(pk=pk).select_related("order__patient").first()
        if denied is not None:
            audit.record(
                audit.Action.DENIED, denied, request=request, outcome=audit.Outcome.FAILURE
            )
        raise Http404("No such report.")
    return report


@require_GET
def report_list(request: HttpRequest) -> HttpResponse:
    """The reports this person may read, newest signature first: a referrer's, a patient's own."""
    if not (
        can(request.user, "reporting.view_report")
        or roles.has_role(request.user, roles.REFERRING_PHYSICIAN)
        or roles.has_role(request.user, roles.PATIENT)
    ):
        raise PermissionDenied("You may not read reports.")
    reports = selectors.signed_reports_visible_to(request.user)
    page = Paginator(reports, PAGE_SIZE).get_page(request.GET.get("page"))
    response = render(request, "reporting/report_list.html", {"page": page})
    audit.record_query(request, "reporting.report", count=page.paginator.count, criteria="signed")
    return response


def _editor_context(request: HttpRequest, report: Report) -> dict[str, Any]:
    user = request.user
    claim = selectors.live_claim(report.study) if report.study else None
    reading = can(user, "reporting.sign_report")
    staff = can(user, "reporting.view_report")
    mine = claim is not None and claim.radiologist_id == user.pk
    addenda = list(report.addenda.select_related("author", "signed_by"))
    return {
        "report": report,
        "order": report.order,
        "study": report.study,
        "patient": report.order.patient,
        "claim": claim,
        "editable": reading and mine and not report.locked,
        "may_claim": reading and claim is None and not report.locked,
        "form": ReportTextForm(
            initial={name: getattr(report, name) for name in services.TEXT_FIELDS}
        ),
        "sign_form": SignForm(),
        "addendum_form": AddendumForm(),
        "addenda": addenda,
        "pending_addenda": [a for a in addenda if a.signed_at is None and a.author_id == user.pk],
        "may_add_addendum": reading and report.locked,
        "may_flag": reading and (mine or report.locked) and not report.critical,
        "may_acknowledge": report.critical
        and report.critical_acknowledged_at is None
        and services.may_acknowledge(acting_user(request), report),
        "dictations": list(report.dictations.all())
        if can(user, "reporting.view_dictation")
        else [],
        "priors": list(selectors.prior_reports(report)[:PRIORS_SHOWN]) if staff else [],
        "is_reading_staff": staff,
        "autosave_seconds": 5,
    }


@require_GET
def report_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """The report: the editor for its claimant, read-only for everyone else who may see it."""
    report = _report_for(request, pk)
    audit.record(audit.Action.VIEW, report, request=request)
    return render(request, "reporting/report.html", _editor_context(request, report))


@require_POST
@permission_required("reporting.change_report", raise_exception=True)
def autosave(request: HttpRequest, pk: int) -> HttpResponse:
    """Save the editor's sections (called every few seconds while the radiologist types)."""
    report = _report_for(request, pk)
    form = ReportTextForm(request.POST)
    if not form.is_valid():
        return JsonResponse({"error": "Invalid report text."}, status=400)
    try:
        saved = services.save_draft(
            report, acting_user(request), form.report_text(), source_address=client_address(request)
        )
    except ValidationError as exc:
        return JsonResponse({"error": _errors(exc)}, status=409)
    stamp = timezone.localtime(saved.updated_at)
    return JsonResponse({"saved_at": stamp.isoformat(), "label": f"Saved {stamp:%H:%M:%S}"})


@require_POST
@permission_required("reporting.sign_report", raise_exception=True)
def sign(request: HttpRequest, pk: int) -> HttpResponse:
    report = _report_for(request, pk)
    form = SignForm(request.POST)
    text = ReportTextForm(request.POST)
    if not form.is_valid() or not text.is_valid():
        messages.error(request, "Enter your password to sign.")
        return redirect("reporting:report", pk=report.pk)
    user, address = acting_user(request), client_address(request)
    final = bool(form.cleaned_data["final"])
    try:
        if any(name in request.POST for name in services.TEXT_FIELDS):
            # The dialog signs what is on the screen, even if the last autosave has not run.
            services.save_draft(report, user, text.report_text(), source_address=address)
        services.sign_report(
            report, user, form.cleaned_data["password"], final=final, source_address=address
        )
    except ValidationError as exc:
        messages.error(request, _errors(exc))
        return redirect("reporting:report", pk=report.pk)
    messages.success(
        request, f"Report signed {'final' if final else 'preliminary'} for {report.order}."
    )
    return redirect("reporting:worklist")


@require_POST
@permission_required("reporting.add_dictation", raise_exception=True)
def upload_dictation(request: HttpRequest, pk: int) -> HttpResponse:
    """Attach a recording (from the browser's recorder or a file) to the report."""
    report = _report_for(request, pk)
    form = DictationForm(request.POST, request.FILES)
    if not form.is_valid():
        error = "Choose an audio file."
        if _wants_json(request):
            return JsonResponse({"error": error}, status=400)
        messages.error(request, error)
        return redirect("reporting:report", pk=report.pk)
    upload = form.cleaned_data["audio"]
    if upload.size > services.DICTATION_MAX_BYTES:
        error = "The recording is too large."
        return JsonResponse({"error": error}, status=413)
    try:
        dictation = services.attach_dictation(
            report,
            acting_user(request),
            upload.read(),
            upload.content_type or "",
            duration_seconds=form.cleaned_data.get("duration"),
            source_address=client_address(request),
        )
    except ValidationError as exc:
        if _wants_json(request):
            return JsonResponse({"error": _errors(exc)}, status=409)
        messages.error(request, _errors(exc))
        return redirect("reporting:report", pk=report.pk)
    url = reverse("reporting:dictation-audio", args=[dictation.pk])
    if _wants_json(request):
        return JsonResponse({"id": dictation.pk, "url": url, "type": dictation.content_type})
    messages.success(request, "Dictation attached; it goes to transcription.")
    return redirect("reporting:report", pk=report.pk)


@require_GET
@permission_required("reporting.view_dictation", raise_exception=True)
def dictation_audio(request: HttpRequest, pk: int) -> HttpResponseBase:
    dictation = get_object_or_404(Dictation.objects.select_related("report__order__patient"), pk=pk)
    path = services.dictation_root() / dictation.file_path
    if not path.is_file():
        raise Http404("The recording's file is missing.")
    audit.record(audit.Action.VIEW, dictation, request=request)
    return FileResponse(open(path, "rb"), content_type=dictation.content_type)


@require_POST
@permission_required("reporting.sign_report", raise_exception=True)
def addendum(request: HttpRequest, pk: int) -> HttpResponse:
    """Write an addendum to a final report and sign it with the password."""
    report = _report_for(request, pk)
    form = AddendumForm(request.POST)
    if not form.is_valid():
        messages.error(request, "An addendum needs its text and your password.")
        return redirect("reporting:report", pk=report.pk)
    user, address = acting_user(request), client_address(request)
    try:
        written = services.add_addendum(
            report, user, form.cleaned_data["text"], source_address=address
        )
        services.sign_addendum(written, user, form.cleaned_data["password"], source_address=address)
    except ValidationError as exc:
        messages.error(request, _errors(exc))
    else:
        messages.success(request, "Addendum signed; the report is amended.")
    return redirect("reporting:report", pk=report.pk)


@require_POST
@permission_required("reporting.sign_report", raise_exception=True)
def sign_addendum(request: HttpRequest, pk: int) -> HttpResponse:
    pending = get_object_or_404(Addendum, pk=pk)
    report = _report_for(request, pending.report_id)
    form = PasswordForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Enter your password to sign.")
        return redirect("reporting:report", pk=report.pk)
    try:
        services.sign_addendum(
            pending,
            acting_user(request),
            form.cleaned_data["password"],
            source_address=client_address(request),
        )
    except ValidationError as exc:
        messages.error(request, _errors(exc))
    else:
        messages.success(request, "Addendum signed; the report is amended.")
    return redirect("reporting:report", pk=report.pk)


@require_POST
@permission_required("reporting.sign_report", raise_exception=True)
def flag_critical(request: HttpRequest, pk: int) -> HttpResponse:
    report = _report_for(request, pk)
    try:
        services.flag_critical(report, acting_user(request), source_address=client_address(request))
    except ValidationError as exc:
        messages.error(request, _errors(exc))
    else:
        messages.success(request, "Critical finding flagged for the referring team.")
    return redirect("reporting:report", pk=report.pk)


def _require_critical_page(request: HttpRequest) -> None:
    if not (
        can(request.user, "reporting.view_report")
        or roles.has_role(request.user, roles.REFERRING_PHYSICIAN)
    ):
        raise PermissionDenied("You may not see critical findings.")


@require_GET
def critical_list(request: HttpRequest) -> HttpResponse:
    """Critical findings not yet acknowledged, for the referring team and administrators."""
    _require_critical_page(request)
    reports = list(selectors.unacknowledged_critical(request.user))
    audit.record_query(
        request, "reporting.report", count=len(reports), criteria="critical unacknowledged"
    )
    user = acting_user(request)
    rows = [(report, services.may_acknowledge(user, report)) for report in reports]
    return render(request, "reporting/critical_list.html", {"rows": rows})


@require_POST
def acknowledge(request: HttpRequest, pk: int) -> HttpResponse:
    _require_critical_page(request)
    report = _report_for(request, pk)
    try:
        services.acknowledge_critical(
            report, acting_user(request), source_address=client_address(request)
        )
    except ValidationError as exc:
        messages.error(request, _errors(exc))
    else:
        messages.success(request, f"Critical finding on {report.order} acknowledged.")
    return redirect("reporting:critical-list")


@require_GET
@permission_required("reporting.transcribe_report", raise_exception=True)
def transcription_queue(request: HttpRequest) -> HttpResponse:
    page = Paginator(selectors.transcription_queue(), PAGE_SIZE).get_page(request.GET.get("page"))
    response = render(request, "reporting/transcription_queue.html", {"page": page})
    audit.record_query(
        request, "reporting.report", count=page.paginator.count, criteria="awaiting transcription"
    )
    return response


@require_http_methods(["GET", "POST"])
@permission_required("reporting.transcribe_report", raise_exception=True)
def transcribe(request: HttpRequest, pk: int) -> HttpResponse:
    """Type a dictation into the report, then hand it back to the radiologist."""
    report = _report_for(request, pk)
    if request.method == "POST":
        form = ReportTextForm(request.POST)
        if form.is_valid():
            try:
                services.submit_transcription(
                    report,
                    acting_user(request),
                    form.report_text(),
                    source_address=client_address(request),
                )
            except ValidationError as exc:
                messages.error(request, _errors(exc))
            else:
                messages.success(request, f"Transcription of {report.order} sent for verification.")
                return redirect("reporting:transcription-queue")
    else:
        form = ReportTextForm(
            initial={name: getattr(report, name) for name in services.TEXT_FIELDS}
        )
        audit.record(audit.Action.VIEW, report, request=request)
    context = {"report": report, "form": form, "dictations": list(report.dictations.all())}
    return render(request, "reporting/transcribe.html", context)


@require_GET
@permission_required("reporting.view_report", raise_exception=True)
def priors(request: HttpRequest, pk: int) -> HttpResponse:
    """The patient's other studies, with their reports, from a worklist row."""
    study = _study(pk)
    studies = list(selectors.patient_studies(study))
    audit.record(audit.Action.VIEW, study.patient, request=request, detail="prior studies")
    return render(request, "reporting/priors.html", {"study": study, "studies": studies})


def _minutes(value: dt.timedelta | None) -> float | None:
    return None if value is None else round(value.total_seconds() / 60, 1)


def _bars(rows: list[tuple[str, float]]) -> dict[str, Any]:
    """Lay out a horizontal bar chart of (label, value) rows as SVG geometry."""
    top = max((value for _, value in rows), default=0) or 1
    bars = [
        {
            "label": label,
            "value": value,
            "y": index * 24,
            "width": round(CHART_WIDTH * value / top, 1),
            "text_x": round(CHART_LABEL_WIDTH + 5 + CHART_WIDTH * value / top, 1),
        }
        for index, (label, value) in enumerate(rows)
    ]
    return {
        "bars": bars,
        "height": max(len(bars) * 24, 24),
        "width": CHART_LABEL_WIDTH + CHART_WIDTH + 60,
        "label_width": CHART_LABEL_WIDTH,
    }


@require_GET
@permission_required("reporting.view_turnaround", raise_exception=True)
def turnaround(request: HttpRequest) -> HttpResponse:
    """Turnaround times by modality and radiologist, and each radiologist's daily workload."""
    try:
        days = max(1, min(int(request.GET.get("days", TURNAROUND_DAYS)), 366))
    except ValueError:
        days = TURNAROUND_DAYS
    since = timezone.now() - dt.timedelta(days=days)
    tables: dict[str, list[dict[str, Any]]] = {
        group: [
            {
                "key": row.key,
                "reports": row.reports,
                "order_to_exam": _minutes(row.order_to_exam),
                "exam_to_preliminary": _minutes(row.exam_to_preliminary),
                "exam_to_final": _minutes(row.exam_to_final),
            }
            for row in selectors.turnaround(since, group)
        ]
        for group in ("modality", "radiologist")
    }
    workload = selectors.workload(since)
    context = {
        "days": days,
        "tables": tables,
        "workload": workload,
        "final_chart": _bars(
            [
                (row["key"], row["exam_to_final"])
                for row in tables["modality"]
                if row["exam_to_final"]
            ]
        ),
        "workload_chart": _bars(
            [(f"{row['day']:%Y-%m-%d} {row['radiologist']}", row["reports"]) for row in workload]
        ),
        "claim_minutes": settings.READING_CLAIM_MINUTES,
    }
    audit.record_query(
        request, "reporting.report", count=len(workload), criteria=f"turnaround days={days}"
    )
    return render(request, "reporting/turnaround.html", context)


@require_GET
def patient_reports(request: HttpRequest, patient_id: int) -> HttpResponse:
    """The reports of a patient this person may read, as a fragment of the patient's page."""
    reports = list(
        selectors.reports_visible_to(request.user)
        .filter(order__patient_id=patient_id)
        .order_by("-created_at", "-id")
    )
    audit.record_query(
        request, "reporting.report", count=len(reports), criteria=f"patient {patient_id}"
    )
    return render(request, "reporting/_patient_reports.html", {"reports": reports})


@require_GET
def viewer_report(request: HttpRequest, pk: int) -> HttpResponse:
    """The study's latest report this person may read, as the viewer's side panel."""
    report = (
        selectors.reports_visible_to(request.user)
        .filter(study_id=pk)
        .order_by(F("signed_at").desc(nulls_last=True), "-id")
        .first()
    )
    if report is not None:
        audit.record(audit.Action.VIEW, report, request=request, detail="beside the images")
    return render(request, "reporting/_viewer_report.html", {"report": report})
