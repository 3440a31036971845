"""Scheduling services: free slots from opening hours, booking, moving, double-booking refused."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, connections
from django.utils import timezone

from core.models import AuditEvent
from ris import scheduling, selectors, services
from ris.models import Order, Priority, Room, RoomHours, ScheduledProcedureStep, Weekday
from tests import factories

DAY = dt.date(2030, 1, 7)  # a Monday


def at(hour: int, minute: int = 0, day: dt.date = DAY) -> dt.datetime:
    return timezone.make_aware(dt.datetime.combine(day, dt.time(hour, minute)))


def open_room(name: str = "CT 1", ae_title: str = "CT1") -> Room:
    """A CT room open 08:00-12:00 and 13:00-17:00 every day."""
    room = factories.room(name, "CT", ae_title)
    for day in Weekday:
        RoomHours.objects.create(room=room, weekday=day, opens=dt.time(8), closes=dt.time(12))
        RoomHours.objects.create(room=room, weekday=day, opens=dt.time(13), closes=dt.time(17))
    return room


def unbooked(**fields) -> Order:  # type: ignore[no-untyped-def]
    """An order without a room (from order entry or HL7), its step waiting for a slot."""
    return factories.order(start=at(7), **fields)


def step_of(order: Order) -> ScheduledProcedureStep:
    return ScheduledProcedureStep.objects.get(requested_procedure__order=order)


@pytest.mark.django_db
def test_free_slots_follow_opening_hours_and_bookings() -> None:
    room = open_room()
    scheduling.book_slot(unbooked(), room, at(8, 20))  # CTHEAD takes 20 minutes
    slots = selectors.free_slots(room, DAY, 20)
    starts = [timezone.localtime(start).strftime("%H:%M") for start, _ in slots]
    assert starts[:3] == ["08:00", "08:40", "09:00"]
    assert "08:20" not in starts
    assert "12:00" not in starts and "13:00" in starts  # the lunch break is closed
    assert timezone.localtime(slots[-1][1]).strftime("%H:%M") == "17:00"


@pytest.mark.django_db
def test_a_closed_day_has_no_slots() -> None:
    room = factories.room()
    RoomHours.objects.create(room=room, weekday=Weekday.MONDAY, opens=dt.time(8), closes=dt.time(9))
    assert selectors.free_slots(room, DAY + dt.timedelta(days=1), 20) == []
    assert len(selectors.free_slots(room, DAY, 20)) == 3


@pytest.mark.django_db
def test_booking_sets_room_station_and_times_for_the_worklist() -> None:
    room = open_room()
    order = unbooked()
    step = scheduling.book_slot(order, room, at(9), actor=None)
    step.refresh_from_db()
    assert step.room == room
    assert step.station_ae_title == "CT1"
    assert step.scheduled_start == at(9)
    assert step.scheduled_end == at(9, 20)
    event = AuditEvent.objects.filter(object_type="ris.order", object_id=str(order.pk)).first()
    assert event is not None and "booked: SPS" in event.detail and "CT 1" in event.detail


@pytest.mark.django_db
def test_double_booking_a_room_is_refused_with_the_clash_named() -> None:
    room = open_room()
    first = unbooked()
    scheduling.book_slot(first, room, at(9))
    second = unbooked()
    with pytest.raises(ValidationError) as refused:
        scheduling.book_slot(second, room, at(9, 10))
    message = " ".join(refused.value.messages)
    assert "already booked" in message and first.accession_number in message
    assert step_of(second).room is None  # nothing changed


@pytest.mark.django_db
def test_booking_outside_opening_hours_is_refused() -> None:
    room = open_room()
    with pytest.raises(ValidationError, match="not open"):
        scheduling.book_slot(unbooked(), room, at(11, 50))  # would run into lunch


@pytest.mark.django_db
def test_stat_may_be_fitted_in_over_a_booking_and_the_overlap_shows() -> None:
    room = open_room()
    scheduling.book_slot(unbooked(), room, at(9))
    stat = unbooked(priority=Priority.STAT)
    scheduling.book_slot(stat, room, at(9, 10))
    column = selectors.calendar_columns([room], [DAY])[0]
    assert [step.overlaps for step in column.bookings] == [True, True]
    assert "STAT fitted in" in AuditEvent.objects.filter(object_id=str(stat.pk)).first().detail


@pytest.mark.django_db
def test_a_cancelled_booking_frees_its_slot() -> None:
    room = open_room()
    order = unbooked()
    scheduling.book_slot(order, room, at(9))
    scheduling.cancel_booking(order, "patient called")
    scheduling.book_slot(unbooked(), room, at(9))  # no clash any more
    order.refresh_from_db()
    assert order.status == Order.Status.CANCELLED
    assert order.cancel_reason == "patient called" and order.cancelled_at is not None


@pytest.mark.django_db
def test_cancel_needs_a_reason() -> None:
    order = unbooked()
    with pytest.raises(ValidationError, match="reason"):
        scheduling.cancel_booking(order, "  ")


@pytest.mark.django_db
def test_moving_changes_room_and_time_and_is_audited() -> None:
    room, other = open_room(), open_room("CT 2", "CT2")
    order = unbooked()
    step = scheduling.book_slot(order, room, at(9))
    scheduling.move_booking(step, other, at(14))
    step.refresh_from_db()
    assert (step.room, step.station_ae_title, step.scheduled_start) == (other, "CT2", at(14))
    assert AuditEvent.objects.filter(object_id=str(order.pk), detail__startswith="moved:").exists()
    # the step's own old slot does not block it: move by ten minutes inside its own time
    scheduling.move_booking(step, other, at(14, 10))


@pytest.mark.django_db
def test_a_started_exam_cannot_be_moved_and_a_room_of_another_modality_is_refused() -> None:
    room = open_room()
    order = unbooked()
    step = scheduling.book_slot(order, room, at(9))
    mr = factories.room("MR 1", "MR", "MR1")
    with pytest.raises(ValidationError, match="MR room"):
        scheduling.move_booking(step, mr, at(9))
    services.start_exam([step], started_at=at(9))
    with pytest.raises(ValidationError, match="cannot be moved"):
        scheduling.move_booking(step, room, at(10))


@pytest.mark.django_db
def test_orders_awaiting_a_slot_are_those_without_a_room_stat_first() -> None:
    room = open_room()
    routine, stat = unbooked(), unbooked(priority=Priority.STAT)
    booked = unbooked()
    scheduling.book_slot(booked, room, at(9))
    assert list(selectors.orders_awaiting_slot(["CT"])) == [stat, routine]
    assert list(selectors.orders_awaiting_slot(["MR"])) == []


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_bookings_of_one_slot_cannot_both_succeed() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("row locks are what is tested; SQLite serialises all writers anyway")
    room = open_room()
    orders = [unbooked(), unbooked()]
    barrier = threading.Barrier(2)
    results: list[str] = []

    def book(order: Order) -> None:
        try:
            barrier.wait(timeout=10)
            scheduling.book_slot(order, room, at(10))
            results.append("booked")
        except ValidationError:
            results.append("refused")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=book, args=(order,)) for order in orders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(results) == ["booked", "refused"]
    assert ScheduledProcedureStep.objects.filter(room=room, scheduled_start=at(10)).count() == 1


@pytest.mark.django_db
def test_demo_rooms_get_opening_hours_once() -> None:
    from ris.demo import seed_demo

    first = seed_demo(force=True)
    count = RoomHours.objects.count()
    assert first.room_hours and count > 0
    assert RoomHours.objects.filter(room__name="CR 1").count() == 7  # every day
    assert not seed_demo(force=True).room_hours
    assert RoomHours.objects.count() == count
    ct = Room.objects.get(name="CT 1")
    assert selectors.free_slots(ct, DAY, 30)  # a Monday: open
    assert selectors.free_slots(ct, DAY + dt.timedelta(days=6), 30) == []  # Sunday: closed


@pytest.mark.django_db
def test_room_hours_must_close_after_opening_and_not_overlap() -> None:
    room = open_room()
    inverted = RoomHours(room=room, weekday=Weekday.MONDAY, opens=dt.time(18), closes=dt.time(17))
    with pytest.raises(ValidationError, match="close after"):
        inverted.full_clean()
    overlapping = RoomHours(
        room=room, weekday=Weekday.MONDAY, opens=dt.time(11), closes=dt.time(14)
    )
    with pytest.raises(ValidationError, match="overlap"):
        overlapping.full_clean()
    RoomHours(room=room, weekday=Weekday.MONDAY, opens=dt.time(17), closes=dt.time(20)).full_clean()
