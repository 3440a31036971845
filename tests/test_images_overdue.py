"""The boards flag an exam performed a while ago whose order has no images yet."""

from __future__ import annotations

import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone

from ris import services
from ris.models import ScheduledProcedureStep
from tests import factories

pytestmark = pytest.mark.django_db


def _performed(minutes_ago: int):  # type: ignore[no-untyped-def]
    order = factories.order(in_room=factories.room())
    step = order.requested_procedures.get().steps.get()
    now = timezone.now()
    services.start_exam([step], started_at=now - dt.timedelta(minutes=minutes_ago + 10))
    services.complete_exam([step], ended_at=now - dt.timedelta(minutes=minutes_ago))
    # The step's own clock says when it was last changed: put it back to when it ended.
    ScheduledProcedureStep.objects.filter(pk=step.pk).update(
        updated_at=now - dt.timedelta(minutes=minutes_ago)
    )
    return order


@pytest.mark.parametrize("url_name", ["ris:today", "ris:exams-today"])
def test_flag_after_the_expected_time_and_not_before(
    personas, login, settings, url_name: str
) -> None:  # type: ignore[no-untyped-def]
    settings.EXAM_IMAGES_EXPECTED_MINUTES = 30
    late, recent = _performed(minutes_ago=45), _performed(minutes_ago=5)
    content = login(personas.technologist).get(reverse(url_name)).content.decode()
    rows = {
        order.accession_number: content.split(order.accession_number, 1)[1].split("</tr>", 1)[0]
        for order in (late, recent)
    }
    assert "no images yet" in rows[late.accession_number]
    assert "no images yet" not in rows[recent.accession_number]


def test_images_received_clears_the_flag(personas, login, settings) -> None:  # type: ignore[no-untyped-def]
    settings.EXAM_IMAGES_EXPECTED_MINUTES = 30
    order = _performed(minutes_ago=45)
    services.mark_images_received(order.requested_procedures.get())
    content = login(personas.technologist).get(reverse("ris:exams-today")).content.decode()
    assert order.accession_number in content
    assert "no images yet" not in content
