"""The study browser: search studies, open one, download it as a zip, delete it (administrators).

Who sees what is `selectors.studies_visible_to`; a study a person may not see answers
404, the same as one that does not exist, and the refusal is audited.
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseServerError,
    StreamingHttpResponse,
)
from django.shortcuts import redirect, render
from django.utils.http import content_disposition_header
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from core import audit, roles
from core.audit import client_address
from core.permissions import acting_user, can
from pacs import export, reconciliation, selectors, services
from pacs.forms import (
    COMMON_MODALITIES,
    AssignPatientForm,
    LinkOrderForm,
    RejectForm,
    StudyDeleteForm,
    StudySearchForm,
    UnscheduledForm,
)
from pacs.models import ReconciliationItem, Study
from pacs.storage import default_storage
from ris import services as ris_services
from ris.models import Patient

logger = logging.getLogger(__name__)

PAGE_SIZE = 50


def _refuse(
    request: HttpRequest, what: str, pk: int | None = None, object_type: str = "pacs.study"
) -> NoReturn:
    """Audit the refusal of WHAT to this person, and answer 403."""
    audit.record(
        audit.Action.DENIED,
        request=request,
        outcome=audit.Outcome.FAILURE,
        object_type=object_type,
        object_id=str(pk) if pk is not None else "",
        detail=what,
    )
    raise PermissionDenied(f"You may not {what}.")


def _require_browser(request: HttpRequest) -> None:
    if not selectors.may_browse_studies(request.user):
        _refuse(request, "browse studies")


def _study_for(request: HttpRequest, pk: int) -> Study:
    """The study PK if this person may see it; else 404, audited when it exists."""
    study = (
        selectors.studies_visible_to(request.user)
        .filter(pk=pk)
        .select_related("patient", "requested_procedure__order")
        .first()
    )
    if study is None:
        denied = Study.objects.filter(pk=pk).select_related("patient").first()
        if denied is not None:
            audit.record(
                audit.Action.DENIED, denied, request=request, outcome=audit.Outcome.FAILURE
            )
        raise Http404("No such study.")  # the same answer whether it exists or not
    return study


def _may_delete(request: HttpRequest) -> bool:
    return roles.has_role(request.user, roles.ADMINISTRATOR)


@require_GET
def study_list(request: HttpRequest) -> HttpResponse:
    _require_browser(request)
    form = StudySearchForm(request.GET or None)
    context = {"form": form, "page": None, "modalities": COMMON_MODALITIES}
    if form.is_bound and not form.is_valid():
        return render(request, "pacs/study_list.html", context, status=400)
    search = form.criteria() if form.is_bound else selectors.StudySearch()
    studies = selectors.studies_visible_to(request.user, search)
    page = Paginator(studies, PAGE_SIZE).get_page(request.GET.get("page"))
    audit.record_query(
        request, "pacs.study", count=page.paginator.count, criteria=search.described()
    )
    return render(request, "pacs/study_list.html", {**context, "page": page})


@require_GET
def study_detail(request: HttpRequest, pk: int) -> HttpResponse:
    _require_browser(request)
    study = _study_for(request, pk)
    series = selectors.study_series(study)
    audit.record(audit.Action.VIEW, study, request=request)
    order = study.requested_procedure.order if study.requested_procedure else None
    context = {
        "study": study,
        "series_list": series,
        "order": order,
        "may_open_patient": can(request.user, "ris.view_patient", study.patient),
        "may_open_order": order is not None and can(request.user, "ris.view_order", order),
        "may_delete": _may_delete(request),
    }
    return render(request, "pacs/study_detail.html", context)


@require_GET
def study_download(request: HttpRequest, pk: int) -> HttpResponse | StreamingHttpResponse:
    """The study's stored files as one zip, streamed while it is written."""
    _require_browser(request)
    study = _study_for(request, pk)
    entries = export.zip_entries(study, selectors.study_instances(study))
    storage = default_storage()
    missing = [entry for entry in entries if not storage.exists(entry.relative_path)]
    if missing:
        logger.error("study %s: %d stored file(s) missing", study.pk, len(missing))
        audit.record(
            audit.Action.EXPORT,
            study,
            request=request,
            outcome=audit.Outcome.FAILURE,
            detail=f"zip refused: {len(missing)} of {len(entries)} file(s) missing from storage",
        )
        return HttpResponseServerError(
            f"{len(missing)} of this study's files are missing from the archive's storage; "
            "the download was not started. The administrators have been told in the log.",
            content_type="text/plain; charset=utf-8",
        )
    audit.record(
        audit.Action.EXPORT,
        study,
        request=request,
        detail=f"zip, {len(entries)} instance(s), {sum(entry.size for entry in entries)} bytes",
    )
    response = StreamingHttpResponse(
        export.stream_zip(entries, storage), content_type="application/zip"
    )
    disposition = content_disposition_header(True, f"{export.study_folder(study)}.zip")
    if disposition:
        response["Content-Disposition"] = disposition
    response["Cache-Control"] = "private, no-store"  # patient data: no shared or disk caches
    return response


@require_http_methods(["GET", "POST"])
def study_delete(request: HttpRequest, pk: int) -> HttpResponse:
    """Ask to confirm (GET), then delete the study, its series, instances and files (POST)."""
    if not _may_delete(request):
        _refuse(request, "delete studies", pk)
    study = _study_for(request, pk)
    form = StudyDeleteForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        label = study.accession_number or study.study_instance_uid
        try:
            count = services.delete_study(
                study,
                actor=acting_user(request),
                reason=form.cleaned_data["reason"],
                source_address=client_address(request),
            )
        except Study.DoesNotExist as exc:  # deleted by someone else meanwhile
            raise Http404("No such study.") from exc
        messages.success(request, f"Study {label} deleted with its {count} instance(s).")
        return redirect("pacs:study-list")
    audit.record(audit.Action.VIEW, study, request=request, detail="delete confirmation")
    return render(request, "pacs/study_confirm_delete.html", {"study": study, "form": form})


# The reconciliation queue (front desk, administrators): studies not matched to an order.

RECONCILIATION_STATUSES = ("open", "resolved", "rejected")
BOARD_FLAG_LIMIT = 10  # the boards list the newest few; the queue has them all


def _require_reconciler(request: HttpRequest, pk: int | None = None) -> None:
    if not selectors.may_reconcile(request.user):
        _refuse(request, "reconcile studies", pk, object_type="pacs.reconciliationitem")


def _reconciliation_item(pk: int) -> ReconciliationItem:
    item = (
        ReconciliationItem.objects.filter(pk=pk)
        .select_related("study__patient", "requested_procedure__order__patient", "resolved_by")
        .first()
    )
    if item is None:
        raise Http404("No such reconciliation item.")
    return item


@require_GET
def reconciliation_list(request: HttpRequest) -> HttpResponse:
    _require_reconciler(request)
    status = request.GET.get("status", "open")
    if status not in RECONCILIATION_STATUSES:
        status = "open"
    page = Paginator(selectors.reconciliation_queue(status), PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    audit.record_query(
        request, "pacs.reconciliationitem", count=page.paginator.count, criteria=f"status {status}"
    )
    context = {"page": page, "status": status, "statuses": RECONCILIATION_STATUSES}
    return render(request, "pacs/reconciliation_list.html", context)


@require_GET
def studies_without_order(request: HttpRequest) -> HttpResponse:
    """The boards' flag of studies received with no order: a fragment, refreshed by htmx."""
    if not selectors.may_see_reconciliation_flags(request.user):
        _refuse(request, "see studies without an order", object_type="pacs.reconciliationitem")
    items, count = selectors.studies_without_order(BOARD_FLAG_LIMIT)
    audit.record_query(
        request, "pacs.reconciliationitem", count=len(items), criteria="open, no order found"
    )
    context = {
        "items": items,
        "count": count,
        "may_reconcile": selectors.may_reconcile(request.user),
    }
    return render(request, "pacs/_studies_without_order.html", context)


def _reconciliation_page(
    request: HttpRequest, item: ReconciliationItem, forms: dict[str, Any], status: int = 200
) -> HttpResponse:
    received = item.received or reconciliation.identity_of_study(item.study)
    rows = [
        (keyword, received.get(keyword, ""), item.expected.get(keyword, ""))
        for keyword in reconciliation.IDENTITY_KEYWORDS
    ]
    context = {
        "item": item,
        "study": item.study,
        "rows": rows,
        "current": reconciliation.identity_of_study(item.study),
        "order": item.requested_procedure.order if item.requested_procedure else None,
        **forms,
    }
    return render(request, "pacs/reconciliation_detail.html", context, status=status)


def _action_forms(item: ReconciliationItem) -> dict[str, Any]:
    order = item.requested_procedure.order if item.requested_procedure else None
    return {
        "link_form": LinkOrderForm(
            initial={"accession_number": order.accession_number if order else ""}
        ),
        "assign_form": AssignPatientForm(initial={"issuer": item.study.issuer_of_patient_id}),
        "unscheduled_form": UnscheduledForm(),
        "reject_form": RejectForm(),
    }


@require_GET
def reconciliation_detail(request: HttpRequest, pk: int) -> HttpResponse:
    _require_reconciler(request, pk)
    item = _reconciliation_item(pk)
    audit.record(audit.Action.VIEW, item, request=request)
    return _reconciliation_page(request, item, _action_forms(item))


@require_POST
def reconciliation_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    """Resolve an item: link to an order, assign to a patient, mark unscheduled, or reject."""
    _require_reconciler(request, pk)
    item = _reconciliation_item(pk)
    actor, address = acting_user(request), client_address(request)
    forms = _action_forms(item)
    try:
        if action == "link":
            form: Any = LinkOrderForm(request.POST)
            forms["link_form"] = form
            if form.is_valid():
                requested = reconciliation.find_requested_procedure(
                    "", form.cleaned_data["accession_number"]
                )
                if requested is None:
                    form.add_error("accession_number", "No open order has this accession number.")
                else:
                    reconciliation.link_to_order(
                        item, requested, actor=actor, source_address=address
                    )
                    messages.success(
                        request, f"Linked to order {requested.order.accession_number}."
                    )
                    return redirect("pacs:reconciliation-list")
        elif action == "assign":
            form = AssignPatientForm(request.POST)
            forms["assign_form"] = form
            if form.is_valid():
                patient = ris_services.find_patient_by_identifier(
                    form.cleaned_data["patient_id"], form.cleaned_data["issuer"]
                )
                if patient is None:
                    form.add_error("patient_id", "No patient has this ID from this issuer.")
                else:
                    reconciliation.assign_to_patient(
                        item, patient, actor=actor, source_address=address
                    )
                    messages.success(request, f"Assigned to {patient}.")
                    return redirect("pacs:reconciliation-list")
        elif action == "unscheduled":
            form = UnscheduledForm(request.POST)
            forms["unscheduled_form"] = form
            if form.is_valid():
                order = reconciliation.mark_unscheduled(
                    item,
                    form.cleaned_data["procedure_type"],
                    actor=actor,
                    source_address=address,
                )
                messages.success(request, f"Order {order.accession_number} created and linked.")
                return redirect("pacs:reconciliation-list")
        elif action == "reject":
            form = RejectForm(request.POST)
            forms["reject_form"] = form
            if form.is_valid():
                reconciliation.reject(
                    item, form.cleaned_data["reason"], actor=actor, source_address=address
                )
                messages.success(request, "Rejected; the study stays as received.")
                return redirect("pacs:reconciliation-list")
        elif action == "undo":
            reconciliation.undo(item, actor=actor, source_address=address)
            messages.success(request, "Undone; the item is open again.")
            return redirect("pacs:reconciliation-detail", pk=item.pk)
        else:
            raise Http404("No such action.")
    except (ValueError, ValidationError) as exc:
        messages.error(request, "; ".join(getattr(exc, "messages", [str(exc)])))
    return _reconciliation_page(request, _reconciliation_item(pk), forms, status=400)


@require_GET
def patient_studies(request: HttpRequest, patient_id: int) -> HttpResponse:
    """A patient's studies that this person may see: a fragment for the RIS patient page."""
    patient = Patient.objects.filter(pk=patient_id).first()
    if patient is None or not can(request.user, "ris.view_patient", patient):
        if patient is not None:
            audit.record(
                audit.Action.DENIED, patient, request=request, outcome=audit.Outcome.FAILURE
            )
        raise Http404("No such patient.")  # the same answer whether it exists or not
    studies = list(selectors.studies_visible_to(request.user).filter(patient=patient))
    audit.record_query(request, "pacs.study", count=len(studies), criteria=f"patient={patient.pk}")
    context = {
        "patient": patient,
        "studies": studies,
        "may_open": selectors.may_browse_studies(request.user),
    }
    return render(request, "pacs/_patient_studies.html", context)
