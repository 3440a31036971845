"""In a real browser: the front desk books an order into a free slot, is refused a double
booking, moves the booking; a technologist starts and completes the exam from the board."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from core.services import sync_roles
from ris.models import Order, RoomHours, ScheduledProcedureStep, Weekday
from tests import factories
from tests.browser import browser_page, log_in, screenshot
from tests.personas import make_personas

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_front_desk_books_and_moves_technologist_performs(live_server) -> None:  # type: ignore[no-untyped-def]
    sync_roles()
    make_personas()
    room = factories.room()
    for day in Weekday:
        RoomHours.objects.create(room=room, weekday=day, opens=dt.time(7), closes=dt.time(19))
    today = timezone.localdate()
    waiting = timezone.make_aware(dt.datetime.combine(today, dt.time(6)))
    first = factories.order(factories.patient(family="Slotcase", given="Ada"), start=waiting)
    second = factories.order(start=waiting)
    base = live_server.url
    with browser_page() as page:
        log_in(page, base, "frontdesk", wait_for=None)
        page.wait_for_selector("#schedule")
        page.goto(f"{base}/ris/calendar/?room={room.pk}&date={today}&order={first.pk}")
        page.wait_for_selector("#calendar-mode")
        assert first.accession_number in page.text_content("#awaiting")
        screenshot(page, "calendar-booking-mode")
        page.locator(f'form:has(input[name=start][value="{today}T10:00"]) button').click()
        page.wait_for_selector("text=booked in CT 1")
        booking = page.locator(f'li.booking[data-accession="{first.accession_number}"]')
        assert "10:00\u201310:20" in booking.text_content()

        page.fill("#book-at input[name=accession]", second.accession_number)
        page.fill("#book-at input[name=start]", f"{today}T10:10")
        page.click("#book-at button[type=submit]")
        page.wait_for_selector("text=already booked")
        assert first.accession_number in page.text_content(".messages")
        screenshot(page, "calendar-double-booking-refused")

        page.locator(f'li.booking[data-accession="{first.accession_number}"] >> text=Move').click()
        page.wait_for_selector("#calendar-mode")
        page.locator(f'form:has(input[name=start][value="{today}T14:00"]) button').click()
        page.wait_for_selector("text=moved to CT 1")
        booking = page.locator(f'li.booking[data-accession="{first.accession_number}"]')
        assert "14:00\u201314:20" in booking.text_content()
        screenshot(page, "calendar-moved")
        page.get_by_role("button", name="Log out").click()
        page.wait_for_url("**/login/")

        log_in(page, base, "tech", wait_for=None)
        page.wait_for_selector("#exams")
        row = page.locator("#exams tr", has_text=first.accession_number)
        row.get_by_role("button", name="Start exam").click()
        page.wait_for_selector("text=started")
        row = page.locator("#exams tr", has_text=first.accession_number)
        assert "In progress" in row.text_content()
        screenshot(page, "board-in-progress")
        row.get_by_role("button", name="Complete exam").click()
        page.wait_for_selector("text=completed.")
        row = page.locator("#exams tr", has_text=first.accession_number)
        assert "Completed" in row.text_content()
        screenshot(page, "board-completed")
    first.refresh_from_db()
    assert first.status == Order.Status.COMPLETED
    step = ScheduledProcedureStep.objects.get(requested_procedure__order=first)
    assert step.station_ae_title == "CT1"  # the worklist serves the moved booking
    assert timezone.localtime(step.scheduled_start).time() == dt.time(14)
