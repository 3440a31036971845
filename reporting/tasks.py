"""Celery tasks of reporting: thin wrappers that take ids."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from pacs.services import IngestError
from reporting import distribution

# Seconds before the first retry of a report the archive could not take; doubling after.
ARCHIVE_RETRY_DELAY = 30
ARCHIVE_MAX_RETRY_DELAY = 3600


@shared_task(bind=True, name="reporting.tasks.archive_report", ignore_result=True, max_retries=20)
def archive_report(self: Any, report_id: int, status: str, version: str) -> str:
    """Render VERSION of REPORT_ID's PDF and store it in its study; a retry stores nothing twice."""
    try:
        return distribution.archive_report(report_id, status, version).outcome
    except (IngestError, OSError) as exc:
        if self.request.is_eager:  # in-process a retry would run again at once
            raise
        delay = min(ARCHIVE_RETRY_DELAY * 2**self.request.retries, ARCHIVE_MAX_RETRY_DELAY)
        raise self.retry(exc=exc, countdown=delay) from exc


@shared_task(name="reporting.tasks.sweep_unarchived_reports", ignore_result=True)
def sweep_unarchived_reports() -> int:
    """Beat: queue again the recent signed versions the archive does not hold yet."""
    missing = distribution.unarchived_versions()
    for report_id, status, version in missing:
        archive_report.delay(report_id, status, version)
    return len(missing)
