"""Today's board: per room, every stage of an exam, late and no-show, the exam buttons."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone

from core.models import AuditEvent
from ris import services
from ris.models import Order, RequestedProcedure, ScheduledProcedureStep
from tests import factories

pytestmark = pytest.mark.django_db


def _row(content: str, accession: str) -> str:
    return content.split(f">{accession}</a>", 1)[1].split("</tr>", 1)[0]


def _booked(minutes_from_now: int = 60, room_name: str = "CT 1") -> Order:
    start = timezone.now() + dt.timedelta(minutes=minutes_from_now)
    if timezone.localtime(start).date() != timezone.localdate():
        start = timezone.now()  # keep it on today's board near midnight
    return factories.order(
        in_room=factories.room(room_name, "CT", room_name.replace(" ", "")), start=start
    )


def _step(order: Order) -> ScheduledProcedureStep:
    return ScheduledProcedureStep.objects.get(requested_procedure__order=order)


@pytest.mark.parametrize("url_name", ["ris:today", "ris:exams-today"])
def test_board_groups_by_room(personas, login, url_name: str) -> None:  # type: ignore[no-untyped-def]
    one, two = _booked(room_name="CT 1"), _booked(room_name="CT 2")
    content = login(personas.technologist).get(reverse(url_name)).content.decode()
    assert content.count('class="board-room"') == 2
    assert content.index("CT 1") < content.index(one.accession_number)
    assert content.index("CT 2") < content.index(two.accession_number)
    assert 'hx-trigger="every 15s"' in content


def test_every_stage_shows_on_the_board(personas, login) -> None:  # type: ignore[no-untyped-def]
    orders = [_booked() for _ in range(7)]
    now = timezone.now()
    services.check_in(orders[1])
    for order in orders[2:]:
        services.start_exam([_step(order)], started_at=now)
    for order in orders[3:]:
        services.complete_exam([_step(order)], ended_at=now)
    for order in orders[4:]:
        services.mark_images_received(order.requested_procedures.get())
    services.mark_reported(orders[5].requested_procedures.get().study_instance_uid, final=False)
    services.mark_reported(orders[6].requested_procedures.get().study_instance_uid, final=True)
    content = login(personas.front_desk).get(reverse("ris:today")).content.decode()
    stages = [
        "Scheduled",
        "Arrived",
        "In progress",
        "Completed",
        "Images received",
        "Read",
        "Reported",
    ]
    for order, stage in zip(orders, stages, strict=True):
        assert f'class="stage">{stage}' in _row(content, order.accession_number), stage


def test_mark_reported_keeps_final_and_ignores_unknown_studies() -> None:
    order = _booked()
    requested = order.requested_procedures.get()
    assert services.mark_reported("1.2.3.4", final=True) is None
    services.mark_images_received(requested)
    services.mark_reported(requested.study_instance_uid, final=True)
    services.mark_reported(requested.study_instance_uid, final=False)  # never back
    requested.refresh_from_db()
    assert requested.status == RequestedProcedure.Status.REPORTED
    services.mark_images_received(requested)  # late images do not undo the report
    requested.refresh_from_db()
    assert requested.status == RequestedProcedure.Status.REPORTED
    assert AuditEvent.objects.filter(object_id=str(order.pk), detail__endswith="reported").exists()


def test_late_is_marked_after_the_setting(personas, login, settings) -> None:  # type: ignore[no-untyped-def]
    settings.EXAM_LATE_MINUTES = 15
    start = timezone.now() - dt.timedelta(minutes=20)
    if timezone.localtime(start).date() != timezone.localdate():
        pytest.skip("too close to midnight for a booking 20 minutes ago today")
    late = factories.order(in_room=factories.room(), start=start)
    on_time = _booked(minutes_from_now=5)
    content = login(personas.front_desk).get(reverse("ris:today")).content.decode()
    assert "late-flag" in _row(content, late.accession_number)
    assert "late-flag" not in _row(content, on_time.accession_number)
    settings.EXAM_LATE_MINUTES = 30
    content = login(personas.front_desk).get(reverse("ris:today")).content.decode()
    assert "late-flag" not in _row(content, late.accession_number)


def test_technologist_starts_and_completes_from_the_board(personas, login) -> None:  # type: ignore[no-untyped-def]
    order = _booked()
    step = _step(order)
    client = login(personas.technologist)
    board = client.get(reverse("ris:exams-today")).content.decode()
    assert "Start exam" in _row(board, order.accession_number)
    assert "Check in" not in board and "Cancel" not in board  # front desk's buttons
    response = client.post(reverse("ris:step-start", args=[step.pk]), {"next": "/ris/exams/"})
    assert response.status_code == 302 and response["Location"] == "/ris/exams/"
    board = client.get(reverse("ris:exams-today")).content.decode()
    assert "Complete exam" in _row(board, order.accession_number)
    client.post(reverse("ris:step-complete", args=[step.pk]))
    order.refresh_from_db()
    assert order.status == Order.Status.COMPLETED
    events = AuditEvent.objects.filter(object_id=str(order.pk), actor_name="tech", channel="web")
    assert events.filter(detail__startswith="exam started").exists()
    assert events.filter(detail__startswith="exam completed").exists()


def test_completing_twice_says_why(personas, login) -> None:  # type: ignore[no-untyped-def]
    step = _step(_booked())
    client = login(personas.technologist)
    response = client.post(reverse("ris:step-complete", args=[step.pk]), follow=True)
    assert "cannot be completed" in response.content.decode()


@pytest.mark.parametrize("url_name", ["ris:step-start", "ris:step-complete", "ris:step-no-show"])
def test_exam_buttons_by_role(personas, client, url_name: str) -> None:  # type: ignore[no-untyped-def]
    step = _step(_booked())
    for name, user in personas.all().items():
        client.force_login(user)
        status = client.post(reverse(url_name, args=[step.pk]), {"reason": ""}).status_code
        if name in {"technologist"}:
            assert status in (302, 400), name
        else:
            assert status == 403, f"{name}: {status}"
    step.refresh_from_db()
    assert step.status in ("scheduled", "in_progress", "completed")


def test_no_show_needs_a_reason_and_calls_the_order_off(personas, login) -> None:  # type: ignore[no-untyped-def]
    order = _booked()
    step = _step(order)
    client = login(personas.technologist)
    url = reverse("ris:step-no-show", args=[step.pk])
    assert client.get(url).status_code == 200
    assert client.post(url, {"reason": " "}).status_code == 400
    response = client.post(url, {"reason": "Did not come, phone unanswered"})
    assert response.status_code == 302
    step.refresh_from_db()
    order.refresh_from_db()
    assert step.status == ScheduledProcedureStep.Status.NO_SHOW
    assert order.status == Order.Status.CANCELLED
    assert order.cancel_reason == "No-show: Did not come, phone unanswered"
    board = client.get(reverse("ris:exams-today")).content.decode()
    row = _row(board, order.accession_number)
    assert "No show" in row and "phone unanswered" in row and "Start exam" not in row
    with pytest.raises(ValidationError):
        services.mark_no_show(step, "again")


def test_board_query_count_does_not_grow_with_rows(
    personas, login, django_assert_max_num_queries
) -> None:  # type: ignore[no-untyped-def]
    for number in range(8):
        order = _booked(room_name=f"CT {number % 3}")
        if number % 2:
            services.start_exam([_step(order)], started_at=timezone.now())
    for persona, url_name in (("front_desk", "ris:today"), ("technologist", "ris:exams-today")):
        client = login(getattr(personas, persona))
        client.get(reverse(url_name))  # warm the session and permission caches
        with django_assert_max_num_queries(12):
            response = client.get(reverse(url_name))
        assert response.content.decode().count("<tr class=") == 8
