"""Billing pages: the charge list with its review flags and totals, post, void, export, coverage."""

from __future__ import annotations

import csv
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from core import audit
from core.audit import client_address
from core.permissions import acting_user, can
from ris.billing import selectors, services
from ris.billing.forms import AdjustForm, ChargeFilterForm, CoverageForm, VoidForm
from ris.billing.models import Charge, Coverage
from ris.models import Patient

PAGE_SIZE = 50
MISSING_SHOWN = 20  # completed exams without a charge listed on the page; the rest counted
CSV_COLUMNS = [
    "charge",
    "status",
    "performed_at",
    "accession_number",
    "patient",
    "patient_id",
    "procedure",
    "cpt_code",
    "description",
    "modifiers",
    "quantity",
    "unit_price",
    "amount",
    "currency",
    "modality",
    "referring_physician",
    "covered",
    "order_cancelled",
    "posted_at",
    "posted_by",
    "hl7_control_id",
    "voided_at",
    "voided_by",
    "void_reason",
]


def _filter_form(request: HttpRequest) -> ChargeFilterForm:
    return ChargeFilterForm(request.GET or None, initial={"status": Charge.Status.PENDING})


# A spreadsheet reads a cell starting with one of these as a formula (CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    """Return VALUE for a CSV cell; text a spreadsheet would run as a formula is quoted."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _local(moment: Any) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M") if moment else ""


@require_GET
@permission_required("billing.view_charge", raise_exception=True)
def charge_list(request: HttpRequest) -> HttpResponse:
    """Charges by status, filtered by date and procedure, with review flags and totals."""
    form = _filter_form(request)
    if form.is_bound and not form.is_valid():
        return render(request, "billing/charges.html", {"form": form, "page": None}, status=400)
    criteria = form.criteria()
    page = Paginator(selectors.charges(criteria), PAGE_SIZE).get_page(request.GET.get("page"))
    missing = selectors.exams_without_charge()
    user = request.user
    response = render(
        request,
        "billing/charges.html",
        {
            "form": form,
            "criteria": criteria,
            "page": page,
            "review": _review(request, selectors.review_counts(criteria)),
            "missing": list(missing[:MISSING_SHOWN]),
            "missing_count": missing.count(),
            "by_day": selectors.totals_by_day(criteria),
            "by_modality": selectors.totals_by_modality(criteria),
            "by_referrer": selectors.totals_by_referrer(criteria),
            "query": request.GET.urlencode(),
            "can_post": can(user, "billing.post_charge"),
            "can_void": can(user, "billing.void_charge"),
            "can_export": can(user, "billing.export_charge"),
            "can_capture": can(user, "billing.add_charge"),
            "status_tabs": _status_tabs(request, selectors.status_counts(criteria)),
        },
    )
    audit.record_query(
        request, "billing.charge", count=page.paginator.count, criteria=request.GET.urlencode()
    )
    return response


def _status_tabs(request: HttpRequest, counts: dict[str, int]) -> list[dict[str, Any]]:
    """One tab per status, keeping the other filters; its link, label and count."""
    tabs = []
    for value, label in [*Charge.Status.choices, ("", "All")]:
        query = request.GET.copy()
        query.pop("page", None)
        query["status"] = value
        tabs.append(
            {
                "value": value,
                "label": label,
                "count": counts.get(value, sum(counts.values())),
                "query": query.urlencode(),
            }
        )
    return tabs


def _review(request: HttpRequest, counts: dict[str, int]) -> list[dict[str, Any]]:
    """One line per review flag: its label, count, and the link listing those charges."""
    lines = []
    for flag, count in counts.items():
        query = request.GET.copy()
        query.pop("page", None)
        query["status"], query["flag"] = "", flag
        lines.append({"label": selectors.FLAGS[flag], "count": count, "query": query.urlencode()})
    return lines


@require_POST
@permission_required("billing.post_charge", raise_exception=True)
def post_charges(request: HttpRequest) -> HttpResponse:
    """Post the selected pending charges: one DFT^P03 per patient when a destination takes DFT."""
    back = reverse("billing:charge-list") + "?" + request.POST.get("back", "")
    try:
        ids = [int(value) for value in request.POST.getlist("charge")]
        result = services.post_charges(
            ids, actor=acting_user(request), source_address=client_address(request)
        )
    except ValueError:
        messages.error(request, "The selection is not valid.")
        return redirect(back)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect(back)
    text = f"{len(result.posted)} charge(s) posted; {len(result.messages)} DFT^P03 queued."
    if result.unsent:
        text += (
            f" {len(result.unsent)} charge(s) posted without a message:"
            " no HL7 destination takes DFT."
        )
    messages.success(request, text)
    return redirect(back)


@require_GET
@permission_required("billing.export_charge", raise_exception=True)
def export_csv(request: HttpRequest) -> HttpResponse:
    """The filtered charges as CSV, every row; the export is audited."""
    form = _filter_form(request)
    if form.is_bound and not form.is_valid():
        return HttpResponse(form.errors.as_text(), status=400, content_type="text/plain")
    rows = list(selectors.charges(form.criteria()).select_related("procedure_type"))
    stamp = timezone.localtime().strftime("%Y%m%d-%H%M")
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="charges-{stamp}.csv"'
    writer = csv.writer(response)
    writer.writerow(CSV_COLUMNS)
    for charge in rows:
        cells = [
            charge.pk,
            charge.status,
            _local(charge.performed_at),
            charge.order.accession_number,
            charge.patient.display_name,
            charge.patient_id,
            charge.procedure_type.code,
            charge.procedure_code,
            charge.description,
            charge.modifiers,
            charge.quantity,
            charge.unit_price,
            charge.amount,
            charge.currency,
            charge.modality,
            charge.referring_physician_name,
            "yes" if charge.covered else "no",  # type: ignore[attr-defined]
            _local(charge.order_cancelled_at),
            _local(charge.posted_at),
            charge.posted_by.get_username() if charge.posted_by else "",
            charge.posted_control_id,
            _local(charge.voided_at),
            charge.voided_by.get_username() if charge.voided_by else "",
            charge.void_reason,
        ]
        writer.writerow([_cell(value) for value in cells])
    audit.record(
        audit.Action.EXPORT,
        request=request,
        object_type="billing.charge",
        detail=f"{len(rows)} charge(s) as CSV; {request.GET.urlencode()}".rstrip("; "),
    )
    return response


@require_http_methods(["GET", "POST"])
@permission_required("billing.view_charge", raise_exception=True)
def charge_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One charge: what it bills, its history; adjust a pending one, void, capture again."""
    charge = get_object_or_404(
        Charge.objects.select_related(
            "order",
            "patient",
            "procedure_type",
            "posted_by",
            "voided_by",
        ),
        pk=pk,
    )
    void_form, adjust_form = (
        VoidForm(),
        AdjustForm(initial={"quantity": charge.quantity, "modifiers": charge.modifiers}),
    )
    status = 200
    if request.method == "POST":
        action = request.POST.get("action", "")
        outcome = _act(request, charge, action)
        if isinstance(outcome, HttpResponse):
            return outcome
        void_form, adjust_form, status = outcome
    else:
        audit.record(audit.Action.VIEW, charge, request=request)
    return render(
        request,
        "billing/charge_detail.html",
        {
            "charge": charge,
            "void_form": void_form,
            "adjust_form": adjust_form,
            "can_void": can(request.user, "billing.void_charge")
            and charge.status != Charge.Status.VOID,
            "can_adjust": can(request.user, "billing.change_charge")
            and charge.status == Charge.Status.PENDING,
            "can_recapture": can(request.user, "billing.add_charge")
            and charge.status == Charge.Status.VOID,
        },
        status=status,
    )


def _act(
    request: HttpRequest, charge: Charge, action: str
) -> HttpResponse | tuple[VoidForm, AdjustForm, int]:
    """Do ACTION (void, adjust, recapture) on CHARGE; a redirect, or the forms with errors."""
    perms = {
        "void": "billing.void_charge",
        "adjust": "billing.change_charge",
        "recapture": "billing.add_charge",
    }
    if action not in perms:
        return HttpResponse("Unknown action.", status=400, content_type="text/plain")
    if not can(request.user, perms[action]):
        audit.record(
            audit.Action.DENIED,
            charge,
            request=request,
            outcome=audit.Outcome.FAILURE,
            detail=action,
        )
        raise PermissionDenied(f"You may not {action} charges.")
    actor, address = acting_user(request), client_address(request)
    void_form = VoidForm(request.POST if action == "void" else None)
    adjust_form = AdjustForm(
        request.POST if action == "adjust" else None,
        initial={"quantity": charge.quantity, "modifiers": charge.modifiers},
    )
    try:
        if action == "void":
            if not void_form.is_valid():
                return void_form, adjust_form, 400
            services.void_charge(
                charge, void_form.cleaned_data["reason"], actor=actor, source_address=address
            )
            messages.success(request, f"Charge {charge.pk} voided.")
        elif action == "adjust":
            if not adjust_form.is_valid():
                return void_form, adjust_form, 400
            services.adjust_charge(
                charge,
                quantity=adjust_form.cleaned_data["quantity"],
                modifiers=adjust_form.cleaned_data["modifiers"],
                actor=actor,
                source_address=address,
            )
            messages.success(request, f"Charge {charge.pk} changed.")
        else:
            new = services.recapture_charge(charge, actor=actor, source_address=address)
            messages.success(request, f"Charge {new.pk} captured again.")
            return redirect("billing:charge-detail", pk=new.pk)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    return redirect("billing:charge-detail", pk=charge.pk)


@require_POST
@permission_required("billing.add_charge", raise_exception=True)
def capture_missing(request: HttpRequest) -> HttpResponse:
    """Capture the charges of every completed exam that has none."""
    created = services.capture_missing_charges(
        actor=acting_user(request),
        channel=audit.Channel.WEB,
        source_address=client_address(request),
    )
    messages.success(request, f"{len(created)} charge(s) captured.")
    return redirect("billing:charge-list")


def _patient(request: HttpRequest, pk: int) -> Patient:
    patient = Patient.objects.filter(pk=pk, merged_into__isnull=True).first()
    if patient is None or not can(request.user, "ris.view_patient", patient):
        if patient is not None:
            audit.record(
                audit.Action.DENIED, patient, request=request, outcome=audit.Outcome.FAILURE
            )
        raise Http404("No such patient.")
    return patient


@require_http_methods(["GET", "POST"])
@permission_required("billing.view_coverage", raise_exception=True)
def coverage(request: HttpRequest, pk: int) -> HttpResponse:
    """A patient's insurance coverage: list, add, change (?edit=<id>)."""
    patient = _patient(request, pk)
    editing: Coverage | None = None
    edit_id = request.POST.get("coverage") or request.GET.get("edit")
    if edit_id:
        if not edit_id.isdigit():
            raise Http404("No such coverage.")
        editing = get_object_or_404(Coverage, pk=int(edit_id), patient=patient)
    may_change = can(request.user, "billing.change_coverage" if editing else "billing.add_coverage")
    form = CoverageForm(instance=editing)
    status = 200
    if request.method == "POST":
        if not may_change:
            raise PermissionDenied("You may not change coverage.")
        form = CoverageForm(request.POST, instance=editing)
        if form.is_valid():
            data = {name: form.cleaned_data[name] for name in services.COVERAGE_FIELDS}
            try:
                services.save_coverage(
                    patient,
                    data,
                    coverage=editing,
                    actor=acting_user(request),
                    source_address=client_address(request),
                )
            except ValidationError as exc:
                _form_errors(form, exc)
                status = 400
            else:
                messages.success(request, "Coverage saved.")
                return redirect("billing:coverage", pk=patient.pk)
        else:
            status = 400
    else:
        audit.record(audit.Action.VIEW, patient, request=request, detail="coverage")
    return render(
        request,
        "billing/coverage.html",
        {
            "patient": patient,
            "coverages": selectors.coverages_of(patient),
            "form": form,
            "editing": editing,
            "may_change": may_change,
            "may_delete": can(request.user, "billing.delete_coverage"),
        },
        status=status,
    )


def _form_errors(form: CoverageForm, exc: ValidationError) -> None:
    if hasattr(exc, "error_dict"):
        for name, errors in exc.message_dict.items():
            form.add_error(name if name in form.fields else None, errors)
    else:
        form.add_error(None, exc.messages)


@require_POST
@permission_required("billing.delete_coverage", raise_exception=True)
def coverage_delete(request: HttpRequest, pk: int) -> HttpResponse:
    item = get_object_or_404(Coverage.objects.select_related("patient"), pk=pk)
    patient = _patient(request, item.patient_id)
    services.delete_coverage(
        item, actor=acting_user(request), source_address=client_address(request)
    )
    messages.success(request, "Coverage removed.")
    return redirect("billing:coverage", pk=patient.pk)
