"""Writes of the scheduling calendar: book an order into a room's slot, move it, call it off.

A booking sets the scheduled procedure step's room, station and times, so the modality
worklist serves the new slot at once. Two bookings of one room are serialised by a row
lock on the room: of two front-desk clerks taking the same slot, one gets it and the
other a clear refusal. Only a STAT order may be fitted in over another booking or
outside the room's opening hours; the calendar shows the overlap.
"""

from __future__ import annotations

import datetime as dt

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from core import audit
from ris import selectors, services
from ris.models import Order, Priority, Room, ScheduledProcedureStep

# Orders whose steps may still be given another room or time.
MOVABLE_ORDER_STATES = (Order.Status.SCHEDULED, Order.Status.ARRIVED)
MOVABLE_STEP_STATES = (
    ScheduledProcedureStep.Status.SCHEDULED,
    ScheduledProcedureStep.Status.ARRIVED,
)


def _local(moment: dt.datetime) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M")


def _check_room_free(
    room: Room, start: dt.datetime, end: dt.datetime, step: ScheduledProcedureStep
) -> None:
    """Refuse START-END in ROOM when it is closed then or another booking holds part of it."""
    day = timezone.localtime(start).date()
    intervals = selectors.opening_intervals(selectors.room_hours([room]).get(room.pk, []), day)
    if not any(opens <= start and end <= closes for opens, closes in intervals):
        hours = ", ".join(f"{o:%H:%M}-{c:%H:%M}" for o, c in intervals) or "closed all day"
        raise ValidationError(
            f"{room.name} is not open from {_local(start)} to {timezone.localtime(end):%H:%M} "
            f"(hours that day: {hours}); only a STAT order may be fitted in."
        )
    clash = (
        selectors.busy_steps([room], start, end)
        .exclude(pk=step.pk)
        .select_related("requested_procedure__order")
        .first()
    )
    if clash is not None:
        raise ValidationError(
            f"{room.name} is already booked from {_local(clash.scheduled_start)} to "
            f"{timezone.localtime(clash.scheduled_end):%H:%M} "
            f"(order {clash.requested_procedure.order.accession_number}); "
            "only a STAT order may be fitted in."
        )


def _place(
    step: ScheduledProcedureStep,
    room: Room,
    start: dt.datetime,
    *,
    verb: str,
    actor: User | None,
    actor_name: str,
    channel: str | None,
    source_address: str,
) -> ScheduledProcedureStep:
    """Give STEP ROOM and START after checking the room is free; the caller holds a transaction."""
    if timezone.is_naive(start):
        raise ValidationError({"start": "The start time must carry a time zone."})
    # The room's row lock comes first: every booking of this room waits here for the others.
    room = Room.objects.select_for_update().get(pk=room.pk)
    order_id = (
        ScheduledProcedureStep.objects.filter(pk=step.pk)
        .values_list("requested_procedure__order_id", flat=True)
        .get()
    )
    order = Order.objects.select_for_update().get(pk=order_id)
    step = (
        ScheduledProcedureStep.objects.select_for_update(of=("self",))
        .select_related("requested_procedure__procedure_type", "room")
        .get(pk=step.pk)
    )
    if order.status not in MOVABLE_ORDER_STATES or step.status not in MOVABLE_STEP_STATES:
        raise ValidationError(
            f"Order {order.accession_number} is {order.get_status_display()} "
            f"(SPS {step.sps_id} {step.get_status_display()}) and cannot be {verb}."
        )
    if not room.active:
        raise ValidationError(f"{room.name} is not in use.")
    if room.modality != step.modality:
        raise ValidationError(
            f"{room.name} is a {room.modality} room; SPS {step.sps_id} needs {step.modality}."
        )
    minutes = step.requested_procedure.procedure_type.default_duration_minutes
    end = start + dt.timedelta(minutes=minutes)
    stat = order.priority == Priority.STAT
    if not stat:
        _check_room_free(room, start, end, step)
    before = f"{step.room or 'no room'} at {_local(step.scheduled_start)}"
    step.room = room
    step.station_ae_title = room.station_ae_title or ""
    step.station_name = room.station_name
    step.scheduled_start = start
    step.scheduled_end = end
    step.save(
        update_fields=[
            "room",
            "station_ae_title",
            "station_name",
            "scheduled_start",
            "scheduled_end",
            "updated_at",
        ]
    )
    overlapping = stat and selectors.busy_steps([room], start, end).exclude(pk=step.pk).exists()
    detail = f"{verb}: SPS {step.sps_id} in {room.name} at {_local(start)} (was {before})"
    if overlapping:
        detail += ", STAT fitted in over another booking"
    audit.record(
        audit.Action.UPDATE,
        order,
        actor=actor,
        actor_name=actor_name,
        channel=channel,
        source_address=source_address,
        detail=detail,
    )
    return step


@transaction.atomic
def book_slot(
    order: Order,
    room: Room,
    start: dt.datetime,
    *,
    actor: User | None = None,
    actor_name: str = "",
    channel: str | None = audit.Channel.WEB,
    source_address: str = "",
) -> ScheduledProcedureStep:
    """Book ORDER's open step for ROOM's modality into ROOM at START."""
    step = (
        ScheduledProcedureStep.objects.filter(
            requested_procedure__order=order,
            status__in=MOVABLE_STEP_STATES,
            modality=room.modality,
        )
        .order_by("pk")
        .first()
    )
    if step is None:
        raise ValidationError(
            f"Order {order.accession_number} has no open {room.modality} step to book."
        )
    return _place(
        step,
        room,
        start,
        verb="booked",
        actor=actor,
        actor_name=actor_name,
        channel=channel,
        source_address=source_address,
    )


@transaction.atomic
def move_booking(
    step: ScheduledProcedureStep,
    room: Room,
    start: dt.datetime,
    *,
    actor: User | None = None,
    actor_name: str = "",
    channel: str | None = audit.Channel.WEB,
    source_address: str = "",
) -> ScheduledProcedureStep:
    """Move STEP to ROOM at START; the worklist serves the new time and station at once."""
    return _place(
        step,
        room,
        start,
        verb="moved",
        actor=actor,
        actor_name=actor_name,
        channel=channel,
        source_address=source_address,
    )


def cancel_booking(
    order: Order,
    reason: str,
    *,
    actor: User | None = None,
    actor_name: str = "",
    channel: str | None = audit.Channel.WEB,
    source_address: str = "",
) -> Order:
    """Cancel ORDER's booking for REASON (the order is called off, as by HL7 ORC-1 CA)."""
    return services.cancel_order(
        order,
        reason,
        actor=actor,
        actor_name=actor_name,
        channel=channel,
        source_address=source_address,
    )
