"""RIS pages: the day's schedule, patients, orders, a patient's own record."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from core import audit
from core.audit import client_address
from core.permissions import acting_user, can
from ris import selectors, services
from ris.models import Order, Patient, Room


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
        {"steps": steps, "images_expected_minutes": settings.EXAM_IMAGES_EXPECTED_MINUTES},
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
    query = request.GET.get("q", "")
    patients = selectors.patients_visible_to(request.user, query)
    page = Paginator(patients, 50).get_page(request.GET.get("page"))
    audit.record_query(request, "ris.patient", count=page.paginator.count, criteria=f"q={query}")
    return render(request, "ris/patient_list.html", {"page": page, "query": query})


def _patient_for(request: HttpRequest, pk: int) -> Patient:
    patient = Patient.objects.filter(pk=pk).first()
    if patient is None or not can(request.user, "ris.view_patient", patient):
        if patient is not None:
            audit.record(
                audit.Action.DENIED, patient, request=request, outcome=audit.Outcome.FAILURE
            )
        raise Http404("No such patient.")  # the same answer whether it exists or not
    return patient


@require_GET
def patient_detail(request: HttpRequest, pk: int) -> HttpResponse:
    patient = _patient_for(request, pk)
    orders = selectors.patient_orders(patient)
    if not can(request.user, "ris.view_order"):
        orders = selectors.orders_visible_to(request.user).filter(patient=patient)
    audit.record(audit.Action.VIEW, patient, request=request)
    return render(request, "ris/patient_detail.html", {"patient": patient, "orders": orders})


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
