"""Celery tasks of the HL7 outbox: thin wrappers that take ids."""

from __future__ import annotations

from celery import shared_task

from ris.hl7 import outbox


@shared_task(name="ris.hl7.tasks.deliver_outbox", ignore_result=True)
def deliver_outbox(destination_id: int) -> int:
    """Send the due messages of one destination, in order; return how many were delivered."""
    return outbox.deliver(destination_id).delivered


@shared_task(name="ris.hl7.tasks.sweep_outbox", ignore_result=True)
def sweep_outbox() -> list[int]:
    """Beat: start a delivery for every destination with a message due (leftovers, retries)."""
    return outbox.sweep()
