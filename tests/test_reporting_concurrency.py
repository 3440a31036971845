"""Two radiologists claim one study at the same moment: one reads it, the other is refused."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection, connections

from core.services import sync_roles
from reporting import services
from reporting.models import ReadingClaim
from tests import factories
from tests.personas import make_user

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="row locks need PostgreSQL (SQLite has one writer)",
    ),
]


def test_two_simultaneous_claims_give_one_reader() -> None:
    sync_roles()
    readers = [make_user(f"reader{n}", "radiologist") for n in range(2)]
    study = factories.received_study(factories.order())
    start = threading.Barrier(len(readers))
    outcomes: dict[str, Any] = {}

    def claim(user: Any) -> None:
        try:
            start.wait(10)
            outcomes[user.username] = services.claim_study(study, user)
        except Exception as exc:
            outcomes[user.username] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=claim, args=(user,)) for user in readers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    claims = [value for value in outcomes.values() if isinstance(value, ReadingClaim)]
    refusals = [value for value in outcomes.values() if isinstance(value, services.ClaimRefused)]
    assert len(claims) == 1 and len(refusals) == 1, outcomes
    assert ReadingClaim.objects.filter(study=study, released_at__isnull=True).count() == 1
