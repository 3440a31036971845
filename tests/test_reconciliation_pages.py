"""The reconciliation queue page: front desk and administrators only; actions audited."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pydicom
import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from core.models import AuditEvent
from pacs.models import Instance, ReconciliationItem, Study
from pacs.storage import default_storage
from ris import services as ris_services
from ris.models import RequestedProcedure
from tests import dicom_factory, factories
from tests.archive import running_archive, store, study_with_a_wrong_patient_id
from tests.personas import Personas

pytestmark = [
    pytest.mark.django_db(transaction=True),
    # The header rewrite is a Celery task; in CI a broker is configured but no worker runs.
    pytest.mark.usefixtures("eager"),
]

Login = Callable[[Any], Client]


@pytest.fixture
def queued(personas: Personas) -> Iterator[tuple[ReconciliationItem, RequestedProcedure]]:
    """An order, and a study for it with a wrong patient id: one open item."""
    with study_with_a_wrong_patient_id() as found:
        yield found


@pytest.mark.parametrize(
    ("who", "allowed"),
    [
        ("front_desk", True),
        ("admin", True),
        ("technologist", False),
        ("radiologist", False),
        ("transcriptionist", False),
        ("referring_physician", False),
        ("patient", False),
        ("outsider", False),
    ],
)
def test_who_may_see_the_queue(
    queued: tuple[ReconciliationItem, RequestedProcedure],
    personas: Personas,
    login: Login,
    who: str,
    allowed: bool,
) -> None:
    item, _ = queued
    client = login(getattr(personas, who))
    listing = client.get(reverse("pacs:reconciliation-list"))
    detail = client.get(reverse("pacs:reconciliation-detail", args=[item.pk]))
    reject = client.post(
        reverse("pacs:reconciliation-action", args=[item.pk, "reject"]), {"reason": "no"}
    )
    if allowed:
        assert listing.status_code == 200
        assert b"WRONG99" in listing.content
        assert detail.status_code == 200
        assert b"MRN4242" in detail.content  # the order's side
        assert reject.status_code == 302
    else:
        assert (listing.status_code, detail.status_code, reject.status_code) == (403, 403, 403)
        item.refresh_from_db()
        assert item.status == ReconciliationItem.Status.OPEN
        assert AuditEvent.objects.filter(action=AuditEvent.Action.DENIED).exists()


def test_anonymous_is_sent_to_login(queued: tuple[ReconciliationItem, RequestedProcedure]) -> None:
    response = Client().get(reverse("pacs:reconciliation-list"))
    assert response.status_code == 302


def test_front_desk_links_to_the_order(
    queued: tuple[ReconciliationItem, RequestedProcedure], personas: Personas, login: Login
) -> None:
    item, requested = queued
    client = login(personas.front_desk)
    response = client.post(
        reverse("pacs:reconciliation-action", args=[item.pk, "link"]),
        {"accession_number": requested.order.accession_number},
    )
    assert response.status_code == 302
    item.refresh_from_db()
    assert item.resolution == ReconciliationItem.Resolution.LINKED
    assert item.resolved_by == personas.front_desk
    study = Study.objects.get(pk=item.study_id)
    assert study.dicom_patient_id == "MRN4242"
    assert study.requested_procedure == requested
    for path in Instance.objects.filter(series__study=study).values_list("file_path", flat=True):
        ds = pydicom.dcmread(default_storage().path(path))
        assert ds.PatientID == "MRN4242"
        assert ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].PatientID == "WRONG99"
    assert AuditEvent.objects.filter(
        actor=personas.front_desk, object_type="pacs.study", detail__contains="linked to order"
    ).exists()


def test_unknown_accession_is_a_form_error(
    queued: tuple[ReconciliationItem, RequestedProcedure], personas: Personas, login: Login
) -> None:
    item, _ = queued
    response = login(personas.admin).post(
        reverse("pacs:reconciliation-action", args=[item.pk, "link"]),
        {"accession_number": "NOSUCH"},
    )
    assert response.status_code == 400
    assert b"No open order" in response.content
    item.refresh_from_db()
    assert item.status == ReconciliationItem.Status.OPEN


def test_assign_to_another_patient(
    queued: tuple[ReconciliationItem, RequestedProcedure], personas: Personas, login: Login
) -> None:
    item, _ = queued
    other = factories.patient(
        "Other", "Olga", identifiers=[ris_services.IdentifierInput("MRN777", "DEMO")]
    )
    response = login(personas.front_desk).post(
        reverse("pacs:reconciliation-action", args=[item.pk, "assign"]),
        {"patient_id": "MRN777", "issuer": "DEMO"},
    )
    assert response.status_code == 302
    study = Study.objects.get(pk=item.study_id)
    assert study.patient == other
    assert study.patient_name == "Other^Olga"
    assert study.requested_procedure is None


def test_an_item_dealt_with_cannot_be_resolved_again(
    queued: tuple[ReconciliationItem, RequestedProcedure], personas: Personas, login: Login
) -> None:
    item, requested = queued
    client = login(personas.front_desk)
    url = reverse("pacs:reconciliation-action", args=[item.pk, "reject"])
    assert client.post(url, {"reason": "test"}).status_code == 302
    again = client.post(
        reverse("pacs:reconciliation-action", args=[item.pk, "link"]),
        {"accession_number": requested.order.accession_number},
    )
    assert again.status_code == 400
    assert Study.objects.get(pk=item.study_id).requested_procedure is None


def test_queue_list_query_count_does_not_grow(
    queued: tuple[ReconciliationItem, RequestedProcedure], personas: Personas, login: Login
) -> None:
    client = login(personas.admin)
    url = reverse("pacs:reconciliation-list")
    client.get(url)
    with CaptureQueriesContext(connection) as one:
        client.get(url)
    for _ in range(3):
        with running_archive() as port:
            store(port, dicom_factory.series(1, accession=""))
    assert ReconciliationItem.objects.count() == 4
    with CaptureQueriesContext(connection) as four:
        client.get(url)
    assert len(four) == len(one)


def test_nav_shows_reconciliation_to_front_desk_only(personas: Personas, login: Login) -> None:
    url = reverse("pacs:reconciliation-list").encode()
    assert url in login(personas.front_desk).get(reverse("ris:patient-list")).content
    assert url not in login(personas.radiologist).get(reverse("ris:patient-list")).content


def test_linking_can_be_undone(
    queued: tuple[ReconciliationItem, RequestedProcedure], personas: Personas, login: Login
) -> None:
    item, requested = queued
    client = login(personas.front_desk)
    client.post(
        reverse("pacs:reconciliation-action", args=[item.pk, "link"]),
        {"accession_number": requested.order.accession_number},
    )
    requested.refresh_from_db()
    assert requested.status == RequestedProcedure.Status.IMAGES_RECEIVED

    page = client.get(reverse("pacs:reconciliation-detail", args=[item.pk]))
    assert b'id="undo-item"' in page.content
    response = client.post(reverse("pacs:reconciliation-action", args=[item.pk, "undo"]))

    assert response.status_code == 302
    item.refresh_from_db()
    assert item.status == ReconciliationItem.Status.OPEN
    study = Study.objects.get(pk=item.study_id)
    assert study.dicom_patient_id == "WRONG99"
    assert study.requested_procedure is None
    requested.refresh_from_db()
    assert requested.status == RequestedProcedure.Status.SCHEDULED
    for path in Instance.objects.filter(series__study=study).values_list("file_path", flat=True):
        ds = pydicom.dcmread(default_storage().path(path))
        assert ds.PatientID == "WRONG99"
        assert len(ds.OriginalAttributesSequence) == 2  # the correction and its undoing
    assert AuditEvent.objects.filter(
        actor=personas.front_desk, detail__startswith="reconciliation undone"
    ).exists()
    # Not by someone who may not reconcile.
    assert (
        login(personas.radiologist)
        .post(reverse("pacs:reconciliation-action", args=[item.pk, "undo"]))
        .status_code
        == 403
    )
