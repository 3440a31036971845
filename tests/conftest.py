from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from core.services import sync_roles
from tests.personas import PASSWORD, Personas, make_personas


@pytest.fixture(autouse=True)
def _test_settings(tmp_path: Path, settings: Any) -> None:
    """Every test writes archive files into its own folder; passwords hash fast."""
    settings.STORAGE_DIR = tmp_path / "storage"
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # Peers in tests use throw-away AE titles; the access-control tests turn this off.
    settings.DICOM_ACCEPT_UNKNOWN_AE = True


@pytest.fixture
def personas(db: None) -> Personas:
    sync_roles()
    return make_personas()


@pytest.fixture
def login(client: Client):  # type: ignore[no-untyped-def]
    """Return a function that logs the test client in as a user and returns the client."""

    def _login(user: Any) -> Client:
        assert client.login(username=user.username, password=PASSWORD)
        return client

    return _login


@pytest.fixture(scope="session", autouse=True)
def _close_connection_pools(django_db_setup: None, django_db_blocker: Any) -> Any:
    """Close PostgreSQL pools before the test database is dropped (it refuses while in use)."""
    yield
    from django.db import connections

    with django_db_blocker.unblock():
        for connection in connections.all():
            close_pool = getattr(connection, "close_pool", None)
            if close_pool is not None:
                close_pool()


@pytest.fixture
def eager(settings: Any) -> Any:
    """Run Celery tasks in the test's process, as the embedded set-up does, even when the
    suite has a broker (as in CI): for the Celery app and for code that reads the setting."""
    from config.celery import app

    # Read first: Celery loads its configuration from the settings on first use.
    saved = app.conf.task_always_eager, app.conf.task_eager_propagates
    settings.CELERY_TASK_ALWAYS_EAGER = True
    app.conf.task_always_eager = app.conf.task_eager_propagates = True
    yield app
    app.conf.task_always_eager, app.conf.task_eager_propagates = saved


@pytest.fixture
def billing_system(eager: Any) -> Any:
    """A billing system taking DFT over MLLP, known as a destination; delivered in-process."""
    from ris.hl7.models import Destination
    from tests.hl7util import MLLPReceiver

    receiver = MLLPReceiver()
    receiver.up()
    Destination.objects.create(
        name="billing", host="127.0.0.1", port=receiver.port, message_types="DFT"
    )
    yield receiver
    receiver.close()
