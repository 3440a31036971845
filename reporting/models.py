"""Radiology reports."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from pacs.models import Study
from ris.models import Order, Patient


class Report(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        PRELIMINARY = "preliminary", "Preliminary"
        FINAL = "final", "Final"
        AMENDED = "amended", "Amended"

    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="reports")
    study = models.ForeignKey(
        Study, null=True, blank=True, on_delete=models.SET_NULL, related_name="reports"
    )
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.DRAFT)
    findings = models.TextField(blank=True)
    impression = models.TextField(blank=True)
    signed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    signed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("sign_report", "Can sign reports")]
        indexes = [models.Index(fields=["status", "created_at"])]

    def __str__(self) -> str:
        return f"Report {self.pk} on {self.order.accession_number} ({self.status})"

    @property
    def text(self) -> str:
        sections = [("FINDINGS", self.findings), ("IMPRESSION", self.impression)]
        return "\n\n".join(f"{title}:\n{body}" for title, body in sections if body)

    def audit_patient(self) -> Patient:
        return self.order.patient
