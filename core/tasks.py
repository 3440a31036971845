"""Celery tasks of core."""

from __future__ import annotations

import socket

from celery import shared_task
from django.utils import timezone

from core.models import WorkerHeartbeat


@shared_task(name="core.tasks.record_worker_heartbeat")
def record_worker_heartbeat() -> str:
    """Note that a worker is alive; beat runs this every minute and /health/ reports it."""
    hostname = socket.gethostname()
    WorkerHeartbeat.objects.update_or_create(
        hostname=hostname, defaults={"seen_at": timezone.now()}
    )
    return hostname
