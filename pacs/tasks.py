"""Celery tasks of the archive: thin wrappers that take ids."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from pacs import commitment, header_rewrite


@shared_task(
    bind=True, name="pacs.tasks.send_commitment_report", ignore_result=True, max_retries=None
)
def send_commitment_report(self: Any, commitment_id: int) -> str:
    """Send the Storage Commitment result of COMMITMENT_ID; retry while the node is away."""
    delivery = commitment.deliver_report(commitment_id)
    # In-process (no broker) a retry would run again at once: the sweep retries instead.
    if delivery.retry_in is not None and not self.request.is_eager:
        raise self.retry(countdown=delivery.retry_in)
    return delivery.outcome


@shared_task(name="pacs.tasks.sweep_commitment_reports", ignore_result=True)
def sweep_commitment_reports() -> list[int]:
    """Beat: queue every Storage Commitment result that is due and not yet sent."""
    return commitment.sweep()


@shared_task(name="pacs.tasks.rewrite_study_headers", ignore_result=True)
def rewrite_study_headers(study_id: int) -> int:
    """Rewrite the stored headers of STUDY_ID from its index copies (reconciliation, merges)."""
    return header_rewrite.rewrite_study_headers(study_id).rewritten


@shared_task(name="pacs.tasks.sweep_header_rewrites", ignore_result=True)
def sweep_header_rewrites() -> list[int]:
    """Beat: queue the header rewrites that are due (delayed ones, lost tasks)."""
    due = header_rewrite.due_rewrites()
    for study_id in due:
        rewrite_study_headers.delay(study_id)
    return due
