"""pacs listens to the RIS: a patient merge moves the merged patient's studies."""

from __future__ import annotations

from typing import Any

from django.dispatch import receiver

from pacs.models import Study
from ris.models import Patient
from ris.signals import patients_merged


@receiver(patients_merged, sender=Patient)
def move_studies_of_merged_patient(
    sender: Any, survivor: Patient, merged: Patient, **kwargs: Any
) -> None:
    Study.objects.filter(patient=merged).update(patient=survivor)
