"""DICOMweb for API clients by token: Bearer (as DICOMweb clients send it) or DRF's Token."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from rest_framework.authtoken.models import Token

from tests import dicom_factory as make
from tests.dicomweb_util import store
from tests.personas import Personas

pytestmark = pytest.mark.django_db


def _uids(response: Any) -> set[str]:
    return {item["0020000D"]["Value"][0] for item in json.loads(response.content)}


def test_a_token_opens_dicomweb_with_the_persons_own_rights(
    personas: Personas, client: Client
) -> None:
    study = store(make.series(1, patient_name="Tokencase^Ida", patient_id="TK1"))
    key = Token.objects.create(user=personas.radiologist).key
    for scheme in ("Bearer", "Token"):
        response = client.get("/dicomweb/studies", HTTP_AUTHORIZATION=f"{scheme} {key}")
        assert response.status_code == 200, scheme
        assert _uids(response) == {study.study_instance_uid}
    # A wrong or revoked key is refused, and a token gives no more than its person may see.
    unknown = "Bearer " + "0" * 40
    assert client.get("/dicomweb/studies", HTTP_AUTHORIZATION=unknown).status_code == 401
    outsider_key = Token.objects.create(user=personas.outsider).key
    response = client.get("/dicomweb/studies", HTTP_AUTHORIZATION=f"Bearer {outsider_key}")
    assert response.status_code == 403
    Token.objects.filter(key=key).delete()
    assert client.get("/dicomweb/studies", HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 401


def test_tokens_are_made_and_renewed_with_a_command(personas: Personas) -> None:
    username = personas.referring_physician.username
    call_command("drf_create_token", username, stdout=StringIO())
    first = Token.objects.get(user=personas.referring_physician).key
    call_command("drf_create_token", username, "-r", stdout=StringIO())
    assert Token.objects.get(user=personas.referring_physician).key != first
