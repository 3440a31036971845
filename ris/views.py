"""RIS pages: the day's schedule, patients, orders, a patient's own record."""

from __future__ import annotations

import re
from typing import Any, cast

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from core import audit
from core.audit import client_address
from core.permissions import acting_user, can
from ris import selectors, services
from ris.forms import (
    DEFAULT_REQUESTED_TIME,
    BaseIdentifierFormSet,
    IdentifierFormSet,
    MergeForm,
    OrderForm,
    PatientForm,
    patient_input,
)
from ris.models import Order, Patient, ProcedureType, Room

PATIENT_PAGE_SIZE = 50
# "ris.add_patient" -> "ris.patient": the kind of object a refused permission is about.
_PERMISSION_OBJECT = re.compile(r"\.[a-z]+_(\w+)$")
# Fragments other apps serve for the patient page, by URL name (ris imports neither):
# studies from pacs, reports from reporting. A name not (yet) routed leaves its block out.
PATIENT_STUDIES_FRAGMENT = "pacs:patient-studies"
PATIENT_REPORTS_FRAGMENT = "reporting:patient-reports"
# The boards' flag of studies received with no order: a pacs fragment, for those who hold
# the permission to see it.
STUDIES_WITHOUT_ORDER_FRAGMENT = "pacs:studies-without-order"
STUDIES_WITHOUT_ORDER_PERMISSION = "pacs.view_reconciliationitem"


def _studies_without_order_url(request: HttpRequest) -> str:
    """The URL of the flag of studies without an order, or "" when this person sees none."""
    if not can(request.user, STUDIES_WITHOUT_ORDER_PERMISSION):
        return ""
    try:
        return reverse(STUDIES_WITHOUT_ORDER_FRAGMENT)
    except NoReverseMatch:
        return ""


@require_GET
@permission_required("ris.view_scheduledprocedurestep", raise_exception=True)
def today(request: HttpRequest) -> HttpResponse:
    """The front desk's day: every exam scheduled today, in time order."""
    steps = list(selectors.steps_for_day())
    audit.record_query(request, "ris.scheduledprocedurestep", count=len(steps), criteria="today")
    template = "ris/_schedule_rows.html" if request.htmx else "ris/today.html"  # type: ignore[attr-defined]
    return render(
        request,
        template,
        {
            "steps": steps,
            "images_expected_minutes": settings.EXAM_IMAGES_EXPECTED_MINUTES,
            "without_order_url": _studies_without_order_url(request),
        },
    )


@require_GET
@permission_required("ris.view_scheduledprocedurestep", raise_exception=True)
def exams_today(request: HttpRequest) -> HttpResponse:
    """The technologists' day, one block per room."""
    rooms = list(Room.objects.filter(active=True))
    room_id = request.GET.get("room")
    selected = next((room for room in rooms if str(room.pk) == room_id), None)
    steps = list(selectors.steps_for_day(room_id=selected.pk if selected else None))
    audit.record_query(
        request,
        "ris.scheduledprocedurestep",
        count=len(steps),
        criteria=f"today room={selected.name if selected else 'all'}",
    )
    return render(
        request,
        "ris/exams_today.html",
        {
            "steps": steps,
            "rooms": rooms,
            "selected": selected,
            "images_expected_minutes": settings.EXAM_IMAGES_EXPECTED_MINUTES,
            "without_order_url": _studies_without_order_url(request),
        },
    )


@require_POST
@permission_required("ris.change_order", raise_exception=True)
def check_in(request: HttpRequest, pk: int) -> HttpResponse:
    order = get_object_or_404(Order, pk=pk)
    try:
        services.check_in(order, actor=acting_user(request), source_address=client_address(request))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("ris:today")
    messages.success(request, f"{order.patient} checked in for {order.accession_number}.")
    return redirect("ris:today")


@require_GET
def patient_list(request: HttpRequest) -> HttpResponse:
    """Patients by name (in part, any case or accents), identifier or birth date; as you type."""
    query = request.GET.get("q", "")
    born_text = request.GET.get("born", "")
    born = selectors.parse_birth_date(born_text) if born_text else None
    patients = selectors.patients_visible_to(request.user, query, birth_date=born)
    page = Paginator(patients, PATIENT_PAGE_SIZE).get_page(request.GET.get("page"))
    audit.record_query(
        request, "ris.patient", count=page.paginator.count, criteria=f"q={query} born={born_text}"
    )
    context = {
        "page": page,
        "query": query,
        "born": born_text,
        "may_register": can(request.user, "ris.add_patient"),
    }
    template = "ris/_patient_rows.html" if request.htmx else "ris/patient_list.html"  # type: ignore[attr-defined]
    return render(request, template, context)


def _patient_for(request: HttpRequest, pk: int) -> Patient:
    patient = Patient.objects.filter(pk=pk).first()
    if patient is None or not can(request.user, "ris.view_patient", patient):
        if patient is not None:
            audit.record(
                audit.Action.DENIED, patient, request=request, outcome=audit.Outcome.FAILURE
            )
        raise Http404("No such patient.")  # the same answer whether it exists or not
    return patient


def _require(request: HttpRequest, perm: str, what: str) -> None:
    """Refuse (403, audited) a person without the role permission PERM."""
    if not can(request.user, perm):
        audit.record(
            audit.Action.DENIED,
            request=request,
            outcome=audit.Outcome.FAILURE,
            object_type=_PERMISSION_OBJECT.sub(r".\1", perm),
            detail=what,
        )
        raise PermissionDenied(f"You may not {what}.")


def _fragment_url(name: str, pk: int) -> str:
    """The URL of another app's fragment for the patient page, or "" when it has none."""
    try:
        return reverse(name, args=[pk])
    except NoReverseMatch:
        return ""


@require_GET
def patient_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """A patient's whole history: orders with their exams; studies and reports by fragment."""
    patient = _patient_for(request, pk)
    orders = selectors.patient_orders_visible_to(request.user, patient)
    audit.record(audit.Action.VIEW, patient, request=request)
    active = patient.merged_into_id is None
    context = {
        "patient": patient,
        "orders": orders,
        "may_edit": active and can(request.user, "ris.change_patient"),
        "may_order": active and can(request.user, "ris.add_order"),
        "studies_url": _fragment_url(PATIENT_STUDIES_FRAGMENT, patient.pk),
        "reports_url": _fragment_url(PATIENT_REPORTS_FRAGMENT, patient.pk),
    }
    return render(request, "ris/patient_detail.html", context)


def _error_text(exc: ValidationError) -> str:
    return " ".join(exc.messages)


@require_http_methods(["GET", "POST"])
def patient_register(request: HttpRequest) -> HttpResponse:
    """Register a patient; probable duplicates are shown first and need "register anyway"."""
    _require(request, "ris.add_patient", "register patients")
    data = request.POST if request.method == "POST" else None
    form = PatientForm(data)
    identifiers = cast(BaseIdentifierFormSet, IdentifierFormSet(data, prefix="identifiers"))
    duplicates: list[selectors.ProbableDuplicate] = []
    status = 200
    if data is not None:
        if form.is_valid() and identifiers.is_valid():
            new_identifiers = identifiers.identifiers()
            duplicates = selectors.probable_duplicates(
                family_name=form.cleaned_data["family_name"],
                given_name=form.cleaned_data["given_name"],
                birth_date=form.cleaned_data["birth_date"],
                identifiers=[(i.value, i.issuer) for i in new_identifiers],
            )
            audit.record_query(
                request,
                "ris.patient",
                count=len(duplicates),
                criteria=f"probable duplicates of {form.cleaned_data['family_name']}",
            )
            if not duplicates or data.get("register_anyway"):
                try:
                    patient = services.register_patient(
                        patient_input(form, new_identifiers),
                        actor=acting_user(request),
                        source_address=client_address(request),
                    )
                except ValidationError as exc:
                    form.add_error(None, _error_text(exc))
                    status = 400
                else:
                    messages.success(request, f"{patient} registered.")
                    return redirect("ris:patient-detail", patient.pk)
        else:
            status = 400
    context = {"form": form, "identifiers": identifiers, "duplicates": duplicates}
    return render(request, "ris/patient_register.html", context, status=status)


def _active_patient_for(request: HttpRequest, pk: int) -> Patient:
    """Return patient PK if visible and not merged; for a merged one raise _Redirect."""
    patient = _patient_for(request, pk)
    if patient.merged_into_id is not None:
        messages.error(request, f"{patient} was merged into another record; open that one.")
        raise _Redirect(reverse("ris:patient-detail", args=[patient.merged_into_id]))
    return patient


class _Redirect(Exception):
    """Leave a view for URL (a merged record's page sends to its survivor)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


@require_http_methods(["GET", "POST"])
def patient_edit(request: HttpRequest, pk: int) -> HttpResponse:
    """Change a patient's demographics (audited; the HIS hears an ADT^A08 if it wants it)."""
    _require(request, "ris.change_patient", "edit patients")
    try:
        patient = _active_patient_for(request, pk)
    except _Redirect as leave:
        return redirect(leave.url)
    if request.method == "POST":
        form = PatientForm(request.POST)
        if form.is_valid():
            try:
                changed = services.update_patient(
                    patient,
                    form.changes(),
                    actor=acting_user(request),
                    source_address=client_address(request),
                )
            except ValidationError as exc:
                form.add_error(None, _error_text(exc))
            else:
                if changed:
                    messages.success(request, f"Saved: {', '.join(changed)}.")
                else:
                    messages.info(request, "Nothing changed.")
                return redirect("ris:patient-detail", patient.pk)
        context = {"patient": patient, "form": form}
        return render(request, "ris/patient_edit.html", context, status=400)
    initial = {name: getattr(patient, name) for name in PatientForm.base_fields}
    audit.record(audit.Action.VIEW, patient, request=request, detail="edit form")
    form = PatientForm(initial=initial)
    return render(request, "ris/patient_edit.html", {"patient": patient, "form": form})


@require_http_methods(["GET", "POST"])
def patient_merge(request: HttpRequest, pk: int) -> HttpResponse:
    """Merge two records: find the other one, compare them side by side, choose the survivor."""
    _require(request, "ris.change_patient", "merge patients")
    try:
        patient = _active_patient_for(request, pk)
    except _Redirect as leave:
        return redirect(leave.url)
    if request.method == "POST":
        return _merge(request, patient)
    other_pk = request.GET.get("other", "")
    if other_pk.isdigit():
        try:
            other = _active_patient_for(request, int(other_pk))
        except _Redirect as leave:
            return redirect(leave.url)
        if other.pk == patient.pk:
            messages.error(
                request, "Choose another patient: a record cannot be merged into itself."
            )
            return redirect("ris:patient-merge", patient.pk)
        audit.record(audit.Action.VIEW, patient, request=request, detail="merge comparison")
        audit.record(audit.Action.VIEW, other, request=request, detail="merge comparison")
        sides = [
            (
                side,
                selectors.patient_orders(side).count(),
                MergeForm(initial={"survivor": side.pk, "merged": gone.pk}),
            )
            for side, gone in ((patient, other), (other, patient))
        ]
        return render(
            request,
            "ris/patient_merge_confirm.html",
            {"patient": patient, "other": other, "sides": sides},
        )
    query = request.GET.get("q", "")
    candidates: list[Patient] = []
    if query.strip():
        found = selectors.patients_visible_to(request.user, query).exclude(pk=patient.pk)
        candidates = list(found[: selectors.DUPLICATE_LIMIT])
        audit.record_query(
            request, "ris.patient", count=len(candidates), criteria=f"merge q={query}"
        )
    context = {"patient": patient, "query": query, "candidates": candidates}
    template = "ris/_patient_merge_candidates.html" if request.htmx else "ris/patient_merge.html"  # type: ignore[attr-defined]
    return render(request, template, context)


def _merge(request: HttpRequest, patient: Patient) -> HttpResponse:
    form = MergeForm(request.POST)
    if not form.is_valid():
        messages.error(
            request, " ".join(str(e) for e in form.non_field_errors()) or "Choose both patients."
        )
        return redirect("ris:patient-merge", patient.pk)
    survivor_pk, merged_pk = form.cleaned_data["survivor"], form.cleaned_data["merged"]
    if patient.pk not in (survivor_pk, merged_pk):
        raise Http404("The merge does not concern this patient.")
    try:
        survivor = _active_patient_for(request, survivor_pk)
        merged = _active_patient_for(request, merged_pk)
    except _Redirect as leave:
        return redirect(leave.url)
    try:
        services.merge_patients(
            survivor, merged, actor=acting_user(request), source_address=client_address(request)
        )
    except ValidationError as exc:
        messages.error(request, _error_text(exc))
        return redirect("ris:patient-merge", patient.pk)
    messages.success(request, f"{merged} (record {merged.pk}) merged into {survivor}.")
    return redirect("ris:patient-detail", survivor.pk)


@require_GET
def my_record(request: HttpRequest) -> HttpResponse:
    """A patient's own record: their portal account points at it."""
    patient = Patient.objects.filter(user=acting_user(request)).first()
    if patient is None:
        raise PermissionDenied("This account is not linked to a patient record.")
    return patient_detail(request, patient.pk)


@require_GET
def order_list(request: HttpRequest) -> HttpResponse:
    orders = selectors.orders_visible_to(request.user)
    status = request.GET.get("status", "")
    if status:
        orders = orders.filter(status=status)
    page = Paginator(orders, 50).get_page(request.GET.get("page"))
    audit.record_query(
        request, "ris.order", count=page.paginator.count, criteria=f"status={status}"
    )
    return render(
        request,
        "ris/order_list.html",
        {"page": page, "status": status, "statuses": Order.Status.choices},
    )


@require_GET
def order_detail(request: HttpRequest, pk: int) -> HttpResponse:
    order = selectors.orders_visible_to(request.user).filter(pk=pk).first()
    if order is None:
        denied = Order.objects.filter(pk=pk).first()
        if denied is not None:
            audit.record(
                audit.Action.DENIED, denied, request=request, outcome=audit.Outcome.FAILURE
            )
        raise Http404("No such order.")
    audit.record(audit.Action.VIEW, order, request=request)
    return render(request, "ris/order_detail.html", {"order": order})


@require_http_methods(["GET", "POST"])
def order_create(request: HttpRequest, pk: int) -> HttpResponse:
    """Enter an order for a patient; the accession number is shown on the order's page."""
    _require(request, "ris.add_order", "enter orders")
    try:
        patient = _active_patient_for(request, pk)
    except _Redirect as leave:
        return redirect(leave.url)
    if request.method == "POST":
        form = OrderForm(request.POST)
        if form.is_valid():
            try:
                order = services.book_exam(
                    form.booking(patient),
                    actor=acting_user(request),
                    source_address=client_address(request),
                )
            except ValidationError as exc:
                form.add_error(None, _error_text(exc))
            else:
                messages.success(
                    request, f"Order created: accession number {order.accession_number}."
                )
                return redirect("ris:order-detail", order.pk)
        status = 400
    else:
        form = OrderForm(initial={"requested_date": timezone.localdate()})
        audit.record(audit.Action.VIEW, patient, request=request, detail="order entry")
        status = 200
    context = _procedure_choices(
        request.POST.get("procedure_query", ""), request.POST.get("procedure", "")
    )
    context["default_time"] = DEFAULT_REQUESTED_TIME.strftime("%H:%M")
    return render(
        request, "ris/order_form.html", {"patient": patient, "form": form, **context}, status=status
    )


def _procedure_choices(query: str, selected: str) -> dict[str, Any]:
    """The catalogue lines matching QUERY, with the one chosen (SELECTED, a pk) kept on top."""
    procedures = list(selectors.procedures_matching(query))
    chosen = (
        ProcedureType.objects.filter(pk=int(selected), active=True).first()
        if selected.isdigit()
        else None
    )
    if chosen is not None and chosen not in procedures:
        procedures.insert(0, chosen)
    return {
        "procedures": procedures,
        "procedure_query": query,
        "selected_procedure": chosen.pk if chosen else None,
    }


@require_GET
def procedure_search(request: HttpRequest) -> HttpResponse:
    """The catalogue lines matching what is typed (code or name), for order entry."""
    _require(request, "ris.add_order", "enter orders")
    context = _procedure_choices(
        request.GET.get("procedure_query", ""), request.GET.get("procedure", "")
    )
    return render(request, "ris/_procedure_choices.html", context)


@require_GET
def order_instructions(request: HttpRequest, pk: int) -> HttpResponse:
    """Printable instructions for the patient: what, when, where, and how to prepare."""
    order = selectors.order_for_instructions(request.user, pk)
    if order is None:
        denied = Order.objects.filter(pk=pk).first()
        if denied is not None:
            audit.record(
                audit.Action.DENIED, denied, request=request, outcome=audit.Outcome.FAILURE
            )
        raise Http404("No such order.")
    audit.record(audit.Action.VIEW, order, request=request, detail="patient instructions")
    return render(request, "ris/order_instructions.html", {"order": order})
