"""The calendar pages: who may see, book, move and cancel; refusals say why; query counts."""

from __future__ import annotations

import pytest
from django.urls import reverse

from core.models import AuditEvent
from ris import scheduling
from ris.models import Order
from tests import factories
from tests.test_scheduling import DAY, at, open_room, step_of, unbooked

pytestmark = pytest.mark.django_db

VIEWERS = {"front_desk", "technologist", "radiologist", "admin"}
SCHEDULERS = {"front_desk", "admin"}


def test_calendar_access_by_role(personas, client) -> None:  # type: ignore[no-untyped-def]
    open_room()
    for name, user in personas.all().items():
        client.force_login(user)
        status = client.get(reverse("ris:calendar")).status_code
        assert status == (200 if name in VIEWERS else 403), f"{name}: {status}"


def test_booking_by_role(personas, client) -> None:  # type: ignore[no-untyped-def]
    room = open_room()
    for number, (name, user) in enumerate(personas.all().items()):
        order = unbooked()
        client.force_login(user)
        start = at(8 + number // 2, 30 * (number % 2))
        response = client.post(
            reverse("ris:calendar-book"),
            {"order": order.pk, "room": room.pk, "start": f"{start:%Y-%m-%dT%H:%M}"},
        )
        booked = step_of(order).room == room
        if name in SCHEDULERS:
            assert response.status_code == 302 and booked, name
        else:
            assert response.status_code == 403 and not booked, name


def test_calendar_shows_bookings_and_free_slots_for_the_order_being_booked(personas, login) -> None:  # type: ignore[no-untyped-def]
    room = open_room()
    booked = unbooked()
    scheduling.book_slot(booked, room, at(9))
    waiting = unbooked()
    client = login(personas.front_desk)
    url = reverse("ris:calendar")
    page = client.get(url, {"room": room.pk, "date": DAY.isoformat(), "order": waiting.pk})
    content = page.content.decode()
    assert booked.accession_number in content
    assert "Book here" in content and "09:00\u201309:20" in content
    assert f'value="{DAY:%Y-%m-%d}T09:20"' in content  # the slot after the booking
    assert f'value="{DAY:%Y-%m-%d}T09:00"' not in content.split("Book at a chosen time")[0]
    assert AuditEvent.objects.filter(action="query", detail__contains="calendar").exists()


def test_double_booking_in_the_page_is_refused_with_409_and_a_message(personas, login) -> None:  # type: ignore[no-untyped-def]
    room = open_room()
    first, second = unbooked(), unbooked()
    scheduling.book_slot(first, room, at(9))
    response = login(personas.front_desk).post(
        reverse("ris:calendar-book"),
        {"accession": second.accession_number, "room": room.pk, "start": f"{at(9):%Y-%m-%dT%H:%M}"},
    )
    assert response.status_code == 409
    assert "already booked" in response.content.decode()
    assert step_of(second).room is None


def test_bad_start_and_unknown_order_are_refused(personas, login) -> None:  # type: ignore[no-untyped-def]
    room = open_room()
    client = login(personas.front_desk)
    response = client.post(
        reverse("ris:calendar-book"), {"order": unbooked().pk, "room": room.pk, "start": "soon"}
    )
    assert response.status_code == 409 and "not a date and time" in response.content.decode()
    response = client.post(
        reverse("ris:calendar-book"), {"accession": "NOPE", "room": room.pk, "start": "x"}
    )
    assert response.status_code == 409 and "No order NOPE" in response.content.decode()


def test_move_in_the_page(personas, login) -> None:  # type: ignore[no-untyped-def]
    room = open_room()
    order = unbooked()
    step = scheduling.book_slot(order, room, at(9))
    client = login(personas.front_desk)
    page = client.get(reverse("ris:calendar"), {"room": room.pk, "date": DAY, "move": step.pk})
    assert "Move here" in page.content.decode()
    response = client.post(
        reverse("ris:calendar-move"),
        {"step": step.pk, "room": room.pk, "start": f"{at(15):%Y-%m-%dT%H:%M}"},
    )
    assert response.status_code == 302
    step.refresh_from_db()
    assert step.scheduled_start == at(15)
    forbidden = login(personas.technologist).post(
        reverse("ris:calendar-move"),
        {"step": step.pk, "room": room.pk, "start": f"{at(16):%Y-%m-%dT%H:%M}"},
    )
    assert forbidden.status_code == 403


def test_cancel_asks_for_a_reason(personas, login) -> None:  # type: ignore[no-untyped-def]
    order = unbooked()
    client = login(personas.front_desk)
    url = reverse("ris:order-cancel", args=[order.pk])
    assert client.get(url).status_code == 200
    response = client.post(url, {"reason": ""})
    assert response.status_code == 400 and "needs a reason" in response.content.decode()
    order.refresh_from_db()
    assert order.status == Order.Status.SCHEDULED
    response = client.post(url, {"reason": "Patient moved away", "next": "/ris/today/"})
    assert response.status_code == 302 and response["Location"] == "/ris/today/"
    order.refresh_from_db()
    assert order.status == Order.Status.CANCELLED
    assert order.cancel_reason == "Patient moved away"
    assert order.cancelled_by == personas.front_desk
    for persona in ("technologist", "radiologist", "patient"):
        assert login(getattr(personas, persona)).get(url).status_code == 403


def test_week_view_per_modality_in_constant_queries(
    personas, login, django_assert_max_num_queries
) -> None:  # type: ignore[no-untyped-def]
    rooms = [open_room(), open_room("CT 2", "CT2")]
    for number in range(8):
        scheduling.book_slot(unbooked(), rooms[number % 2], at(8 + number // 2, 0))
    unbooked()
    client = login(personas.front_desk)
    params = {"modality": "CT", "date": DAY.isoformat(), "span": "week"}
    client.get(reverse("ris:calendar"), params)  # warm the session and permission caches
    with django_assert_max_num_queries(10):
        response = client.get(reverse("ris:calendar"), params)
    content = response.content.decode()
    assert content.count('class="calendar-column"') == 14  # 2 rooms x 7 days
    assert content.count('class="booking ') == 8


def test_order_timeline_lists_each_change_with_who_and_when(personas, login) -> None:  # type: ignore[no-untyped-def]
    room = open_room()
    order = unbooked()
    client = login(personas.front_desk)
    client.post(
        reverse("ris:calendar-book"),
        {"order": order.pk, "room": room.pk, "start": f"{at(9):%Y-%m-%dT%H:%M}"},
    )
    client.post(reverse("ris:check-in", args=[order.pk]))
    content = client.get(reverse("ris:order-detail", args=[order.pk])).content.decode()
    timeline = content.split('id="order-timeline"', 1)[1].split("</table>", 1)[0]
    assert timeline.index("ordered") < timeline.index("booked: SPS") < timeline.index("checked in")
    assert timeline.count("frontdesk") == 2
    assert "Book or move in the calendar" in content


def test_referring_physician_sees_the_timeline_of_their_order_only(personas, login) -> None:  # type: ignore[no-untyped-def]
    mine = factories.order(referring_physician=personas.referring_physician)
    client = login(personas.referring_physician)
    content = client.get(reverse("ris:order-detail", args=[mine.pk])).content.decode()
    assert 'id="order-timeline"' in content
    assert "Book or move in the calendar" not in content


def test_a_stat_fitted_in_shows_as_an_overlap(personas, login) -> None:  # type: ignore[no-untyped-def]
    from ris.models import Priority

    room = open_room()
    scheduling.book_slot(unbooked(), room, at(9))
    stat = unbooked(priority=Priority.STAT)
    response = login(personas.front_desk).post(
        reverse("ris:calendar-book"),
        {
            "accession": stat.accession_number,
            "room": room.pk,
            "start": f"{at(9, 10):%Y-%m-%dT%H:%M}",
        },
    )
    assert response.status_code == 302
    page = login(personas.front_desk).get(response["Location"]).content.decode()
    assert page.count("overlap-flag") == 2
