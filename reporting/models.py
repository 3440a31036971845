"""Radiology reports, their addenda, templates, dictations, and reading claims."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from pacs.models import Study
from ris.models import Order, Patient, ProcedureType


class ReportTemplate(models.Model):
    """Prefilled sections for a procedure type, or else for a modality and body part."""

    name = models.CharField(max_length=120)
    procedure_type = models.ForeignKey(
        ProcedureType, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    modality = models.CharField(max_length=16, blank=True)
    body_part = models.CharField(max_length=64, blank=True)
    technique = models.TextField(blank=True)
    findings = models.TextField(blank=True)
    impression = models.TextField(blank=True)
    recommendations = models.TextField(blank=True)
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["name", "id"]
        indexes = [models.Index(fields=["modality", "body_part"])]

    def __str__(self) -> str:
        return self.name


class Report(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        PRELIMINARY = "preliminary", "Preliminary"
        FINAL = "final", "Final"
        AMENDED = "amended", "Amended"

    class Transcription(models.TextChoices):
        NONE = "none", "Typed by the radiologist"
        DICTATED = "dictated", "Dictated, awaiting transcription"
        TRANSCRIBED = "transcribed", "Transcribed, awaiting verification"
        VERIFIED = "verified", "Verified"

    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="reports")
    study = models.ForeignKey(
        Study, null=True, blank=True, on_delete=models.SET_NULL, related_name="reports"
    )
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.DRAFT)
    template = models.ForeignKey(
        ReportTemplate, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    clinical_history = models.TextField(blank=True)
    technique = models.TextField(blank=True)
    findings = models.TextField(blank=True)
    impression = models.TextField(blank=True)
    recommendations = models.TextField(blank=True)
    transcription = models.CharField(
        max_length=12, choices=Transcription.choices, default=Transcription.NONE
    )
    transcribed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    transcribed_at = models.DateTimeField(null=True, blank=True)
    critical = models.BooleanField(default=False)
    critical_flagged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    critical_flagged_at = models.DateTimeField(null=True, blank=True)
    critical_acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    critical_acknowledged_at = models.DateTimeField(null=True, blank=True)
    signed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    signed_at = models.DateTimeField(null=True, blank=True)
    preliminary_at = models.DateTimeField(null=True, blank=True)
    finalized_at = models.DateTimeField(null=True, blank=True)
    # The text as signed final; never changed afterwards (addenda follow it).
    final_text = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [
            ("sign_report", "Can sign reports"),
            ("transcribe_report", "Can transcribe dictated reports"),
            ("view_turnaround", "Can see reporting turnaround and workload"),
        ]
        indexes = [
            models.Index(fields=["status", "created_at"]),
            models.Index(fields=["transcription"]),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["study"], condition=Q(study__isnull=False), name="one_report_per_study"
            )
        ]

    def __str__(self) -> str:
        return f"Report {self.pk} on {self.order.accession_number} ({self.status})"

    @property
    def locked(self) -> bool:
        """A final report's text never changes; corrections are addenda."""
        return self.status in (self.Status.FINAL, self.Status.AMENDED)

    @property
    def main_text(self) -> str:
        if self.locked and self.final_text:
            return self.final_text
        sections = [
            ("CLINICAL HISTORY", self.clinical_history),
            ("TECHNIQUE", self.technique),
            ("FINDINGS", self.findings),
            ("IMPRESSION", self.impression),
            ("RECOMMENDATIONS", self.recommendations),
        ]
        return "\n\n".join(f"{title}:\n{body}" for title, body in sections if body)

    @property
    def text(self) -> str:
        """The report as sent and printed: the main text, then each signed addendum."""
        parts = [self.main_text]
        for addendum in self.addenda.all():
            if addendum.signed_at is not None:
                signer = addendum.signed_by.get_username() if addendum.signed_by else ""
                stamp = f"{addendum.signed_at:%Y-%m-%d %H:%M} UTC"
                parts.append(f"ADDENDUM ({signer}, {stamp}):\n{addendum.text}")
        return "\n\n".join(part for part in parts if part)

    def audit_patient(self) -> Patient:
        return self.order.patient


class Addendum(models.Model):
    """A correction or addition to a final report, signed on its own."""

    report = models.ForeignKey(Report, on_delete=models.CASCADE, related_name="addenda")
    text = models.TextField()
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    signed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    signed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        verbose_name_plural = "addenda"

    def __str__(self) -> str:
        return f"Addendum {self.pk} to report {self.report_id}"

    def audit_patient(self) -> Patient:
        return self.report.order.patient


class Dictation(models.Model):
    """A recording attached to a report; the file lives under STORAGE_DIR/dictation/."""

    report = models.ForeignKey(Report, on_delete=models.CASCADE, related_name="dictations")
    # Relative to the dictation folder (reporting.services.dictation_root()).
    file_path = models.CharField(max_length=255)
    content_type = models.CharField(max_length=100)
    size = models.PositiveIntegerField(default=0)
    duration_seconds = models.FloatField(null=True, blank=True)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    uploaded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["uploaded_at", "id"]

    def __str__(self) -> str:
        return f"Dictation {self.pk} for report {self.report_id}"

    def audit_patient(self) -> Patient:
        return self.report.order.patient


class ReadingClaim(models.Model):
    """A radiologist reading a study: nobody else may report it while the claim is active."""

    class Ended(models.TextChoices):
        RELEASED = "released", "Released"
        EXPIRED = "expired", "Expired"
        REASSIGNED = "reassigned", "Reassigned"
        SIGNED = "signed", "Report signed"

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="reading_claims")
    radiologist = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="reading_claims"
    )
    claimed_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    released_at = models.DateTimeField(null=True, blank=True)
    ended = models.CharField(max_length=12, choices=Ended.choices, blank=True)

    class Meta:
        ordering = ["-claimed_at", "-id"]
        constraints = [
            # No double reading: one claim not yet released per study.
            models.UniqueConstraint(
                fields=["study"],
                condition=Q(released_at__isnull=True),
                name="one_active_claim_per_study",
            )
        ]
        permissions = [("reassign_readingclaim", "Can reassign reading claims")]

    def __str__(self) -> str:
        return f"Claim of study {self.study_id} by {self.radiologist_id}"

    def audit_patient(self) -> Patient:
        return self.study.patient
