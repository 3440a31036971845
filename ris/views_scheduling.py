"""Scheduling pages: the calendar per room or modality, booking, moving, cancelling; the
board's exam buttons (start, complete, no-show)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from core import audit
from core.audit import client_address
from core.permissions import acting_user
from ris import scheduling, selectors, services
from ris.models import Order, Room, ScheduledProcedureStep

SPANS = ("day", "week")
WEEK_DAYS = 7
DEFAULT_START = dt.time(8, 0)  # what the "book at a chosen time" form offers first


def _parse_date(text: str | None) -> dt.date:
    try:
        return dt.date.fromisoformat(text or "")
    except ValueError:
        return timezone.localdate()


def _parse_start(text: str) -> dt.datetime:
    """Read a datetime-local value (YYYY-MM-DDTHH:MM, local time) as an aware datetime."""
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ValidationError(f"{text!r} is not a date and time (YYYY-MM-DDTHH:MM).") from exc
    return moment if timezone.is_aware(moment) else timezone.make_aware(moment)


def _int(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def _next_url(request: HttpRequest, default: str) -> str:
    wanted = request.POST.get("next") or request.GET.get("next") or ""
    if url_has_allowed_host_and_scheme(wanted, {request.get_host()}, request.is_secure()):
        return wanted
    return default


def _calendar_mode(
    params: Any,
) -> tuple[Order | None, ScheduledProcedureStep | None, int | None, str]:
    """The order being booked or the step being moved, the slot length and modality it needs."""
    step_id, order_id = _int(params.get("move")), _int(params.get("order"))
    if step_id is not None:
        step = (
            ScheduledProcedureStep.objects.select_related(
                "room",
                "requested_procedure__procedure_type",
                "requested_procedure__order__patient",
            )
            .filter(pk=step_id)
            .first()
        )
        if step is not None:
            minutes = step.requested_procedure.procedure_type.default_duration_minutes
            return None, step, minutes, step.modality
    elif order_id is not None:
        order = Order.objects.select_related("patient").filter(pk=order_id).first()
        requested = (
            order.requested_procedures.select_related("procedure_type").order_by("pk").first()
            if order
            else None
        )
        if order is not None and requested is not None:
            procedure = requested.procedure_type
            return order, None, procedure.default_duration_minutes, procedure.modality
    return None, None, None, ""


def _calendar_context(request: HttpRequest, params: Any) -> dict[str, Any]:
    """Everything the calendar page shows for the query PARAMS (room, modality, date, span)."""
    all_rooms = list(Room.objects.filter(active=True))
    modalities = sorted({room.modality for room in all_rooms})
    booking_order, moving_step, slot_minutes, wanted_modality = _calendar_mode(params)
    room_id, modality = _int(params.get("room")), params.get("modality", "")
    if room_id is not None:
        rooms = [room for room in all_rooms if room.pk == room_id]
    elif modality or wanted_modality:
        modality = modality or wanted_modality
        rooms = [room for room in all_rooms if room.modality == modality]
    else:
        rooms = all_rooms[:1]
    day = _parse_date(params.get("date"))
    span = params.get("span") if params.get("span") in SPANS else "day"
    if span == "week":
        monday = day - dt.timedelta(days=day.weekday())
        days = [monday + dt.timedelta(days=n) for n in range(WEEK_DAYS)]
    else:
        days = [day]
    columns = selectors.calendar_columns(rooms, days, slot_minutes=slot_minutes)
    step_count = sum(len(column.bookings) for column in columns)
    audit.record_query(
        request,
        "ris.scheduledprocedurestep",
        count=step_count,
        criteria=f"calendar {', '.join(r.name for r in rooms)} {days[0]} {span}",
    )
    where: dict[str, Any] = {}
    if rooms and (room_id is not None or not modality):
        where = {"room": rooms[0].pk}
    elif modality:
        where = {"modality": modality}
    step = dt.timedelta(days=WEEK_DAYS if span == "week" else 1)
    query = {**where, "span": span}
    if moving_step is not None:
        query["move"] = moving_step.pk
    elif booking_order is not None:
        query["order"] = booking_order.pk
    return {
        "all_rooms": all_rooms,
        "modalities": modalities,
        "rooms": rooms,
        "room_id": where.get("room"),
        "modality": modality,
        "day": day,
        "days": days,
        "span": span,
        "columns": columns,
        "booking_order": booking_order,
        "moving_step": moving_step,
        "slot_minutes": slot_minutes,
        "awaiting": list(selectors.orders_awaiting_slot([room.modality for room in rooms])),
        "here": f"{reverse('ris:calendar')}?{urlencode({**query, 'date': day.isoformat()})}",
        "base_query": urlencode(where),
        "previous_query": urlencode({**query, "date": (day - step).isoformat()}),
        "next_query": urlencode({**query, "date": (day + step).isoformat()}),
        "today_query": urlencode({**query, "date": timezone.localdate().isoformat()}),
        "mode_query": urlencode({**query, "date": day.isoformat()}),
        # The "book at a chosen time" form: what was typed, when it is shown again.
        "typed_accession": params.get("accession")
        or (booking_order.accession_number if booking_order else ""),
        "typed_start": params.get("start") or f"{day.isoformat()}T{DEFAULT_START:%H:%M}",
    }


@require_GET
@permission_required("ris.view_scheduledprocedurestep", raise_exception=True)
def calendar(request: HttpRequest) -> HttpResponse:
    """A room's (or a modality's rooms') bookings and free time, by day or week."""
    return render(request, "ris/calendar.html", _calendar_context(request, request.GET))


def _refused(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    """Show the calendar again with the reason of the refusal, as 409 Conflict."""
    messages.error(request, " ".join(exc.messages))
    context = _calendar_context(request, request.POST)
    return render(request, "ris/calendar.html", context, status=409)


def _calendar_after(room: Room, start: dt.datetime) -> str:
    query = {"room": room.pk, "date": timezone.localtime(start).date().isoformat()}
    return f"{reverse('ris:calendar')}?{urlencode(query)}"


@require_POST
@permission_required("ris.schedule_order", raise_exception=True)
def book(request: HttpRequest) -> HttpResponse:
    """Book an order (by id or accession number) into a room at a start time."""
    accession = request.POST.get("accession", "").strip()
    orders = Order.objects.select_related("patient")
    order = (
        orders.filter(accession_number=accession).first()
        if accession
        else orders.filter(pk=_int(request.POST.get("order")) or 0).first()
    )
    room = Room.objects.filter(pk=_int(request.POST.get("room")) or 0).first()
    try:
        if order is None:
            raise ValidationError(f"No order {accession or request.POST.get('order', '')}.")
        if room is None:
            raise ValidationError("Choose a room.")
        start = _parse_start(request.POST.get("start", ""))
        scheduling.book_slot(
            order,
            room,
            start,
            actor=acting_user(request),
            source_address=client_address(request),
        )
    except ValidationError as exc:
        return _refused(request, exc)
    messages.success(
        request,
        f"{order.accession_number} ({order.patient}) booked in {room.name} "
        f"at {timezone.localtime(start):%Y-%m-%d %H:%M}.",
    )
    return redirect(_calendar_after(room, start))


@require_POST
@permission_required("ris.schedule_order", raise_exception=True)
def move(request: HttpRequest) -> HttpResponse:
    """Move a booked step to another room or time."""
    step = get_object_or_404(ScheduledProcedureStep, pk=_int(request.POST.get("step")) or 0)
    room = Room.objects.filter(pk=_int(request.POST.get("room")) or 0).first()
    try:
        if room is None:
            raise ValidationError("Choose a room.")
        start = _parse_start(request.POST.get("start", ""))
        scheduling.move_booking(
            step,
            room,
            start,
            actor=acting_user(request),
            source_address=client_address(request),
        )
    except ValidationError as exc:
        return _refused(request, exc)
    messages.success(
        request,
        f"SPS {step.sps_id} moved to {room.name} at {timezone.localtime(start):%Y-%m-%d %H:%M}.",
    )
    return redirect(_calendar_after(room, start))


def _reason_form(
    request: HttpRequest, order: Order, title: str, action: str, *, error: str = ""
) -> HttpResponse:
    return render(
        request,
        "ris/calendar_reason.html",
        {
            "order": order,
            "title": title,
            "action": action,
            "error": error,
            "reason": request.POST.get("reason", ""),
            "next": _next_url(request, reverse("ris:order-detail", args=[order.pk])),
        },
        status=400 if error else 200,
    )


@require_http_methods(["GET", "POST"])
@permission_required("ris.schedule_order", raise_exception=True)
def cancel(request: HttpRequest, pk: int) -> HttpResponse:
    """Ask for a reason, then cancel the order's booking."""
    order = get_object_or_404(Order.objects.select_related("patient"), pk=pk)
    return _with_reason(
        request,
        order,
        title=f"Cancel order {order.accession_number}",
        action=reverse("ris:order-cancel", args=[pk]),
        apply=lambda reason, origin: scheduling.cancel_booking(order, reason, **origin),
        done=f"Order {order.accession_number} cancelled.",
        back=reverse("ris:today"),
    )


def _with_reason(
    request: HttpRequest,
    order: Order,
    *,
    title: str,
    action: str,
    apply: Callable[[str, dict[str, Any]], object],
    done: str,
    back: str,
) -> HttpResponse:
    """Ask for a reason (GET), then APPLY it (POST); a refusal shows the form again."""
    if request.method == "GET":
        audit.record(audit.Action.VIEW, order, request=request)
        return _reason_form(request, order, title, action)
    origin = {"actor": acting_user(request), "source_address": client_address(request)}
    try:
        apply(request.POST.get("reason", ""), origin)
    except ValidationError as exc:
        return _reason_form(request, order, title, action, error=" ".join(exc.messages))
    messages.success(request, done)
    return redirect(_next_url(request, back))


def _exam_step(pk: int) -> ScheduledProcedureStep:
    return get_object_or_404(
        ScheduledProcedureStep.objects.select_related("requested_procedure__order__patient"),
        pk=pk,
    )


def _perform(request: HttpRequest, pk: int, verb: str) -> HttpResponse:
    """Start or complete (VERB) a step by hand, for a modality without MPPS."""
    step = _exam_step(pk)
    origin: dict[str, Any] = {
        "actor": acting_user(request),
        "channel": audit.Channel.WEB,
        "source_address": client_address(request),
    }
    try:
        if verb == "started":
            services.start_exam([step], started_at=timezone.now(), **origin)
        else:
            services.complete_exam([step], ended_at=timezone.now(), **origin)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"Exam {step.sps_id} {verb}.")
    return redirect(_next_url(request, reverse("ris:exams-today")))


@require_POST
@permission_required("ris.perform_scheduledprocedurestep", raise_exception=True)
def start_exam(request: HttpRequest, pk: int) -> HttpResponse:
    """Start an exam by hand (a modality without MPPS)."""
    return _perform(request, pk, "started")


@require_POST
@permission_required("ris.perform_scheduledprocedurestep", raise_exception=True)
def complete_exam(request: HttpRequest, pk: int) -> HttpResponse:
    """Complete an exam by hand (a modality without MPPS)."""
    return _perform(request, pk, "completed")


@require_http_methods(["GET", "POST"])
@permission_required("ris.perform_scheduledprocedurestep", raise_exception=True)
def no_show(request: HttpRequest, pk: int) -> HttpResponse:
    """Ask for a reason, then mark the step's patient as not come."""
    step = _exam_step(pk)
    order = step.requested_procedure.order
    return _with_reason(
        request,
        order,
        title=f"No-show for order {order.accession_number} (SPS {step.sps_id})",
        action=reverse("ris:step-no-show", args=[pk]),
        apply=lambda reason, origin: services.mark_no_show(step, reason, **origin),
        done=f"{order.patient} marked as not come for {order.accession_number}.",
        back=reverse("ris:exams-today"),
    )
