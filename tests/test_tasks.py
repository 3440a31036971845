"""Celery: in-process by default; with a broker, a real worker process runs the tasks."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from core.models import WorkerHeartbeat
from core.tasks import record_worker_heartbeat
from tests.celery_worker import celery_worker


@pytest.mark.django_db
def test_health_reports_database_and_task_mode(client) -> None:
    body = client.get("/health/").json()
    assert body["status"] == "ok"
    assert body["checks"]["database"] == "ok"
    expected = "in-process" if settings.CELERY_TASK_ALWAYS_EAGER else "broker"
    assert body["checks"]["tasks"] == expected
    assert "patient" not in str(body).lower()


@pytest.mark.django_db
def test_task_runs_in_process_without_a_broker(settings) -> None:  # type: ignore[no-untyped-def]
    from config.celery import app

    app.conf.task_always_eager = True
    try:
        record_worker_heartbeat.delay()
    finally:
        app.conf.task_always_eager = settings.CELERY_TASK_ALWAYS_EAGER
    assert WorkerHeartbeat.objects.count() == 1


@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_runs_the_task_through_the_broker(tmp_path: Path) -> None:
    if not settings.CELERY_BROKER_URL:
        pytest.skip("needs CELERY_BROKER_URL (CI sets it to the local Redis)")
    if connection.vendor == "sqlite":
        pytest.skip("the worker process shares the test database only on PostgreSQL")
    queue = f"test-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "worker.log"
    with celery_worker(queue, log) as worker:
        record_worker_heartbeat.apply_async(queue=queue)
        deadline = time.monotonic() + 60
        while not WorkerHeartbeat.objects.exists():
            assert worker.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the worker did not run the task within 60 s"
            time.sleep(0.2)
    assert WorkerHeartbeat.objects.count() == 1
