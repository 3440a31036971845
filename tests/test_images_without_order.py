"""The boards flag studies received with no order: the front desk and administrators with a
link to the queue item, technologists without one, nobody else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from core.models import AuditEvent
from pacs import reconciliation
from pacs.models import ReconciliationItem, Study
from tests import dicom_factory, factories
from tests.dicomweb_util import store
from tests.personas import Personas

pytestmark = pytest.mark.django_db

Login = Callable[[Any], Client]
FLAG = "Images without an order"
FRAGMENT = "pacs:studies-without-order"


def _without_order(patient_id: str = "NOORDER1") -> ReconciliationItem:
    """A study from a modality that did not use the worklist: no order has its accession."""
    study = store(dicom_factory.series(1, patient_id=patient_id, accession="NOSUCH"))
    item = ReconciliationItem.objects.get(study=study)
    assert item.reason == ReconciliationItem.Reason.NO_ORDER
    return item


@pytest.mark.parametrize(
    ("who", "board", "sees", "may_link"),
    [
        ("front_desk", "ris:today", True, True),
        ("admin", "ris:today", True, True),
        ("technologist", "ris:exams-today", True, False),
        ("radiologist", "ris:exams-today", False, False),
        ("transcriptionist", None, False, False),
        ("referring_physician", None, False, False),
        ("patient", None, False, False),
        ("outsider", None, False, False),
    ],
)
def test_who_sees_the_flag(
    personas: Personas,
    login: Login,
    who: str,
    board: str | None,
    sees: bool,
    may_link: bool,
) -> None:
    item = _without_order()
    client = login(getattr(personas, who))
    fragment_url = reverse(FRAGMENT)
    if board is not None:
        page = client.get(reverse(board)).content.decode()
        assert (f'hx-get="{fragment_url}"' in page) is sees
    fragment = client.get(fragment_url)
    if not sees:
        assert fragment.status_code == 403
        assert AuditEvent.objects.filter(
            action=AuditEvent.Action.DENIED, detail="see studies without an order"
        ).exists()
        return
    assert fragment.status_code == 200
    content = fragment.content.decode()
    assert FLAG in content
    row = content.split(f'data-item="{item.pk}"', 1)[1].split("</tr>", 1)[0]
    assert "NOORDER1" in row and "NOSUCH" in row and "CT CT HEAD" in row
    queue_item = reverse("pacs:reconciliation-detail", args=[item.pk])
    assert (queue_item in row) is may_link
    assert AuditEvent.objects.filter(
        action=AuditEvent.Action.QUERY, object_type="pacs.reconciliationitem"
    ).exists()


def test_only_open_items_of_studies_without_an_order_are_flagged(
    personas: Personas, login: Login
) -> None:
    flagged = _without_order("NOORDER1")
    rejected = _without_order("NOORDER2")
    reconciliation.reject(rejected, "test image", actor=personas.front_desk)
    # A study for a real order, but another patient: in the queue, not this flag.
    requested = factories.order().requested_procedures.get()
    mismatch = store(
        dicom_factory.series(
            1,
            study_uid=requested.study_instance_uid,
            accession=requested.order.accession_number,
            patient_id="SOMEONEELSE",
        )
    )
    assert ReconciliationItem.objects.get(study=mismatch).reason == (
        ReconciliationItem.Reason.PATIENT_MISMATCH
    )

    content = login(personas.front_desk).get(reverse(FRAGMENT)).content.decode()

    assert f'data-item="{flagged.pk}"' in content
    assert "NOORDER2" not in content and "SOMEONEELSE" not in content
    assert f"{FLAG}</strong> (1)" in content


def test_nothing_to_flag_shows_nothing(personas: Personas, login: Login) -> None:
    response = login(personas.front_desk).get(reverse(FRAGMENT))
    assert response.status_code == 200
    assert FLAG not in response.content.decode()


def test_flag_query_count_does_not_grow(personas: Personas, login: Login) -> None:
    _without_order("NOORDER1")
    client = login(personas.front_desk)
    url = reverse(FRAGMENT)
    client.get(url)  # warm the session and permission caches
    with CaptureQueriesContext(connection) as one:
        client.get(url)
    for number in range(2, 6):
        _without_order(f"NOORDER{number}")
    assert Study.objects.filter(requested_procedure__isnull=True).count() == 5
    with CaptureQueriesContext(connection) as five:
        response = client.get(url)
    assert response.content.decode().count('class="without-order"') == 5
    assert len(five) == len(one)


def test_the_flag_lists_the_newest_and_counts_them_all(
    personas: Personas, login: Login, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pacs import views

    monkeypatch.setattr(views, "BOARD_FLAG_LIMIT", 2)
    items = [_without_order(f"NOORDER{number}") for number in range(3)]
    content = login(personas.front_desk).get(reverse(FRAGMENT)).content.decode()
    assert content.count('class="without-order"') == 2
    assert f'data-item="{items[0].pk}"' not in content  # the oldest waits in the queue
    assert f"{FLAG}</strong> (3)" in content
    assert "All 3 in the reconciliation queue" in content
