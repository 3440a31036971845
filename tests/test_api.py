"""The REST API: login or Basic auth, role and object permissions, audited reads."""

from __future__ import annotations

import base64

import pytest

from core.models import AuditEvent
from tests import factories
from tests.personas import PASSWORD

pytestmark = pytest.mark.django_db


def _basic(username: str, password: str = PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"HTTP_AUTHORIZATION": f"Basic {token}"}


def test_anonymous_gets_401_not_a_redirect(client) -> None:
    response = client.get("/api/patients/", **_basic("nobody", "x"))
    assert response.status_code == 401
    assert client.get("/api/orders/").status_code in (401, 403)


def test_front_desk_lists_patients_over_basic_auth(personas, client) -> None:
    factories.patient(family="Apilisted")
    response = client.get("/api/patients/", **_basic("frontdesk"))
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 1
    assert body["results"][0]["family_name"] == "Apilisted"
    assert body["results"][0]["identifiers"][0]["issuer"] == "DEMO"
    event = AuditEvent.objects.get(action="query", object_type="ris.patient")
    assert event.channel == "api"
    assert event.actor_name == "frontdesk"


def test_referring_physician_reads_only_granted_orders(personas, client) -> None:
    mine = factories.order(referring_physician=personas.referring_physician)
    other = factories.order()
    client.force_login(personas.referring_physician)
    listing = client.get("/api/orders/").json()
    assert [row["accession_number"] for row in listing["results"]] == [mine.accession_number]
    assert client.get(f"/api/orders/{mine.pk}/").status_code == 200
    assert client.get(f"/api/orders/{other.pk}/").status_code == 404
    assert AuditEvent.objects.filter(action="view", object_id=str(mine.pk)).count() == 1


def test_api_is_read_only(personas, client) -> None:
    client.force_login(personas.front_desk)
    response = client.post(
        "/api/patients/", {"family_name": "Nope"}, content_type="application/json"
    )
    assert response.status_code == 405


def test_outsider_gets_empty_lists(personas, client) -> None:
    factories.order()
    client.force_login(personas.outsider)
    assert client.get("/api/orders/").json()["count"] == 0
