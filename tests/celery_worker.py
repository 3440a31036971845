"""A real Celery worker process on the test database, for tests that need the broker path."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def test_database_url() -> str:
    """DATABASE_URL of the test database this process uses, for a child process to share."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    host, port = db.get("HOST") or "127.0.0.1", db.get("PORT") or 5432
    return f"postgres://{user}@{host}:{port}/{db['NAME']}"


@contextmanager
def celery_worker(queue: str, log: Path, **environment: str) -> Iterator[subprocess.Popen[str]]:
    """Run `celery worker` on QUEUE against the test database; its output goes to LOG."""
    env = {
        **os.environ,
        "DATABASE_URL": test_database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        **environment,
    }
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "config",
        "worker",
        "--pool=solo",
        "-Q",
        queue,
        "--without-heartbeat",
        "--without-mingle",
        "--without-gossip",
        "-l",
        "INFO",
    ]
    with log.open("w") as output:
        worker = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, text=True
        )
        try:
            yield worker
        finally:
            worker.terminate()
            worker.wait(timeout=30)
