"""ris's exam tracking services, which MPPS drives: start, complete, discontinue."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone

from core.models import AuditEvent
from ris import services, signals
from ris.models import Order, RequestedProcedure, ScheduledProcedureStep
from tests import factories

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 1, 5, 9, 30, tzinfo=dt.UTC)


@pytest.fixture
def status_changes() -> Iterator[list[tuple[str, str]]]:
    seen: list[tuple[str, str]] = []

    def receiver(sender: Any, order: Order, old_status: str, new_status: str, **_: Any) -> None:
        seen.append((old_status, new_status))

    signals.order_status_changed.connect(receiver, sender=Order)
    yield seen
    signals.order_status_changed.disconnect(receiver, sender=Order)


def _step(order: Order) -> ScheduledProcedureStep:
    return ScheduledProcedureStep.objects.get(requested_procedure__order=order)


def test_start_then_complete_moves_step_procedure_and_order(
    status_changes: list[tuple[str, str]],
) -> None:
    order = factories.order()
    step = _step(order)
    services.start_exam([step], started_at=NOW, performed_station_ae_title="CT1", actor_name="CT1")
    order.refresh_from_db()
    assert order.status == Order.Status.IN_PROGRESS
    assert _step(order).status == ScheduledProcedureStep.Status.IN_PROGRESS
    assert order.requested_procedures.get().status == RequestedProcedure.Status.IN_PROGRESS

    services.complete_exam([step], ended_at=NOW + dt.timedelta(minutes=20), actor_name="CT1")
    order.refresh_from_db()
    assert order.status == Order.Status.COMPLETED
    assert _step(order).status == ScheduledProcedureStep.Status.COMPLETED
    assert order.requested_procedures.get().status == RequestedProcedure.Status.COMPLETED
    assert status_changes == [("scheduled", "in_progress"), ("in_progress", "completed")]
    events = AuditEvent.objects.filter(object_type="ris.order", object_id=str(order.pk))
    by_modality = events.filter(channel="dicom", actor_name="CT1")
    details = list(by_modality.values_list("detail", flat=True))
    assert any(detail.startswith("exam started: SPS") and "CT1" in detail for detail in details)
    assert any(detail.startswith("exam completed: SPS") for detail in details)


def test_an_arrived_patient_can_start_and_a_discontinued_exam_keeps_its_reason(
    status_changes: list[tuple[str, str]],
) -> None:
    order = factories.order()
    services.check_in(order)
    step = _step(order)
    services.start_exam([step], started_at=NOW, actor_name="MR1")
    services.discontinue_exam(
        [step], reason="Patient refused", ended_at=NOW + dt.timedelta(minutes=5), actor_name="MR1"
    )
    order.refresh_from_db()
    assert _step(order).status == ScheduledProcedureStep.Status.DISCONTINUED
    # No step is left open: the order is finished.
    assert order.status == Order.Status.COMPLETED
    assert status_changes[-2:] == [("arrived", "in_progress"), ("in_progress", "completed")]
    assert AuditEvent.objects.filter(
        object_type="ris.order", detail__contains="Patient refused"
    ).exists()


def test_a_second_start_of_the_same_step_changes_nothing(
    status_changes: list[tuple[str, str]],
) -> None:
    step = _step(factories.order())
    services.start_exam([step], started_at=NOW)
    services.start_exam([step], started_at=NOW + dt.timedelta(minutes=1))
    assert status_changes == [("scheduled", "in_progress")]


@pytest.mark.parametrize("ended", ["complete", "discontinue"])
def test_illegal_transitions_are_refused_and_change_nothing(ended: str) -> None:
    order = factories.order()
    step = _step(order)
    with pytest.raises(ValidationError, match="cannot be"):
        if ended == "complete":
            services.complete_exam([step], ended_at=NOW)  # never started
        else:
            services.discontinue_exam([step], reason="x", ended_at=NOW)
    assert _step(order).status == ScheduledProcedureStep.Status.SCHEDULED
    services.cancel_order(order, "duplicate")
    with pytest.raises(ValidationError, match="Cancelled and cannot be started"):
        services.start_exam([step], started_at=NOW)
    order.refresh_from_db()
    assert order.status == Order.Status.CANCELLED


def test_images_received_is_not_taken_back_by_completion() -> None:
    order = factories.order()
    step = _step(order)
    services.start_exam([step], started_at=NOW)
    RequestedProcedure.objects.filter(order=order).update(
        status=RequestedProcedure.Status.IMAGES_RECEIVED
    )
    services.complete_exam([step], ended_at=NOW)
    assert order.requested_procedures.get().status == RequestedProcedure.Status.IMAGES_RECEIVED


def test_naive_times_and_no_steps_are_refused() -> None:
    step = _step(factories.order())
    with pytest.raises(ValidationError, match="time zone"):
        services.start_exam([step], started_at=NOW.replace(tzinfo=None))
    with pytest.raises(ValidationError, match="No scheduled procedure step"):
        services.start_exam([], started_at=timezone.now())


def test_the_technologists_day_and_the_order_show_the_exam_state(personas: Any, login: Any) -> None:
    room = factories.room()
    order = factories.order(in_room=room)  # this hour, today
    step = _step(order)
    services.start_exam([step], started_at=timezone.now(), actor_name="CT1")
    client = login(personas.technologist)
    page = client.get(reverse("ris:exams-today")).content.decode()
    assert "In progress" in page
    services.complete_exam([step], ended_at=timezone.now(), actor_name="CT1")
    detail = client.get(reverse("ris:order-detail", args=[order.pk])).content.decode()
    assert "Completed" in detail
