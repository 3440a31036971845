"""Reporting listens to the archive: a study being read is not taken off its order."""

from __future__ import annotations

from typing import Any

from django.dispatch import receiver

from pacs.models import Study
from pacs.signals import UndoRefused, study_unlinking
from reporting import selectors
from reporting.models import Report
from ris.models import RequestedProcedure


@receiver(study_unlinking, sender=Study, dispatch_uid="reporting-keep-reports")
def refuse_if_reported(
    sender: Any, study: Study, requested_procedure: RequestedProcedure, **kwargs: Any
) -> None:
    """Refuse while the study has a report, in any state, or a radiologist is reading it."""
    report = Report.objects.filter(study=study).select_related("author", "order").first()
    if report is not None:
        author = report.author.get_username() if report.author else "a radiologist"
        raise UndoRefused(
            f"Order {report.order.accession_number} has a {report.get_status_display().lower()}"
            f" report by {author}: undoing would take the images from under it."
        )
    claim = selectors.live_claim(study)
    if claim is not None:
        reader = claim.radiologist.get_full_name() or claim.radiologist.get_username()
        raise UndoRefused(
            f"{reader} is reading this study; it cannot be undone until the reading is released."
        )
