"""What the archive tells the apps built on it, inside the transaction of the change.

pacs cannot import reporting; reporting connects here instead (see ris.signals).
"""

from __future__ import annotations

from django.dispatch import Signal


class UndoRefused(ValueError):
    """Undoing a reconciliation would lose work done on the study since; nothing changed."""


# sender=Study; kwargs: study, requested_procedure. Sent before reconciliation's undo takes
# STUDY off REQUESTED_PROCEDURE. A receiver that knows of work done on them since (a report
# being written or signed, a reading under way) raises UndoRefused saying what it is.
study_unlinking = Signal()
