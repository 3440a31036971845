"""What the modalities report back: Modality Performed Procedure Step instances (PS3.3 C.4.13).

The worklist itself is read from ris's scheduled procedure steps; only the performed
steps, which the modality creates and ends by MPPS, are kept here.
"""

from __future__ import annotations

from typing import Any

from django.db import models

from ris.models import Patient, ScheduledProcedureStep


class PerformedProcedureStep(models.Model):
    """One MPPS SOP instance, created by N-CREATE and ended by N-SET (PS3.4 F.7)."""

    class Status(models.TextChoices):
        # Performed Procedure Step Status (0040,0252), PS3.3 C.4.14.
        IN_PROGRESS = "in_progress", "In progress"
        COMPLETED = "completed", "Completed"
        DISCONTINUED = "discontinued", "Discontinued"

    sop_instance_uid = models.CharField("SOP instance UID", max_length=64, unique=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.IN_PROGRESS)
    performed_procedure_step_id = models.CharField(max_length=16, blank=True)  # (0040,0253)
    description = models.CharField(max_length=64, blank=True)  # (0040,0254)
    modality = models.CharField(max_length=16, blank=True)
    performed_station_ae_title = models.CharField(max_length=16, blank=True)  # (0040,0241)
    performed_station_name = models.CharField(max_length=16, blank=True)  # (0040,0242)
    performed_location = models.CharField(max_length=16, blank=True)  # (0040,0243)
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    # What the modality said it performed for, as received (first Scheduled Step Attributes item).
    study_instance_uid = models.CharField(max_length=64, blank=True, db_index=True)
    accession_number = models.CharField(max_length=16, blank=True, db_index=True)
    patient_id = models.CharField("Patient ID", max_length=64, blank=True)
    patient_name = models.CharField(max_length=324, blank=True)
    # Performed Series Sequence (0040,0340): one dict per series with its instances.
    performed_series = models.JSONField(default=list, blank=True)
    discontinuation_reason = models.CharField(max_length=255, blank=True)
    scheduled_steps = models.ManyToManyField(
        ScheduledProcedureStep, blank=True, related_name="performed_steps"
    )
    # Unscheduled, or not matching the RIS's state: someone has to look at it.
    needs_reconciliation = models.BooleanField(default=False, db_index=True)
    reconciliation_reason = models.CharField(max_length=255, blank=True)
    calling_ae_title = models.CharField(max_length=16, blank=True)
    # The whole instance as last set, in the DICOM JSON model (PS3.18 F.2).
    attributes = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        verbose_name = "performed procedure step"

    def __str__(self) -> str:
        return f"MPPS {self.performed_procedure_step_id or self.sop_instance_uid} {self.status}"

    def audit_patient(self) -> Patient | None:
        step: Any = self.scheduled_steps.select_related(
            "requested_procedure__order__patient"
        ).first()
        return step.requested_procedure.order.patient if step is not None else None
