"""pacs listens: a patient merge in the RIS moves studies; a node change empties the cache."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from pacs import reconciliation
from pacs.models import DicomNode
from pacs.selectors import node_cache
from ris.models import Patient
from ris.signals import patients_merged


@receiver(patients_merged, sender=Patient)
def move_studies_of_merged_patient(
    sender: Any, survivor: Patient, merged: Patient, **kwargs: Any
) -> None:
    """Studies of MERGED answer with SURVIVOR's identity at once; their files follow (a task)."""
    reconciliation.follow_merge(survivor, merged)


@receiver(post_save, sender=DicomNode)
@receiver(post_delete, sender=DicomNode)
def forget_known_nodes(sender: Any, **kwargs: Any) -> None:
    """A node was added, changed or removed in this process: read the table again."""
    node_cache.clear()
