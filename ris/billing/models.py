"""Charges captured from completed exams, and the insurance coverage of patients.

A completed exam's requested procedure gets one live charge (pending, then posted to
the billing system by DFT^P03); a voided charge stays as a record beside its successor.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from ris.models import Order, Patient, ProcedureType, RequestedProcedure

# CPT modifier 53: the procedure was started and then discontinued (AMA CPT appendix A).
MODIFIER_DISCONTINUED = "53"


class Charge(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        POSTED = "posted", "Posted"
        VOID = "void", "Void"

    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="charges")
    requested_procedure = models.ForeignKey(
        RequestedProcedure, on_delete=models.PROTECT, related_name="charges"
    )
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="charges")
    procedure_type = models.ForeignKey(ProcedureType, on_delete=models.PROTECT, related_name="+")
    # The CPT code of the procedure when captured; empty means the catalogue has none.
    procedure_code = models.CharField("CPT code", max_length=16, blank=True)
    description = models.CharField(max_length=200)
    modifiers = models.CharField(max_length=32, blank=True)  # CPT modifiers, comma-separated
    quantity = models.PositiveIntegerField(default=1)
    unit_price = models.DecimalField(max_digits=10, decimal_places=2)
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    performed_at = models.DateTimeField()
    referring_physician_name = models.CharField(max_length=192, blank=True)
    modality = models.CharField(max_length=16)
    created_at = models.DateTimeField(auto_now_add=True)
    posted_at = models.DateTimeField(null=True, blank=True)
    posted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The DFT^P03 that posted it (the first destination's, when several take DFT).
    posted_message = models.ForeignKey(
        "hl7.OutboundMessage",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    # Its MSH-10, kept when the outbox row is long gone; empty: posted with nothing sent.
    posted_control_id = models.CharField(max_length=199, blank=True)
    voided_at = models.DateTimeField(null=True, blank=True)
    voided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    void_reason = models.TextField(blank=True)
    # The DFT^P03 crediting a posted charge that was voided.
    void_message = models.ForeignKey(
        "hl7.OutboundMessage",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    void_control_id = models.CharField(max_length=199, blank=True)
    # Review flag: the order was cancelled while this charge was live.
    order_cancelled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-performed_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["requested_procedure"],
                condition=~Q(status="void"),
                name="one_live_charge_per_requested_procedure",
            )
        ]
        indexes = [
            models.Index(fields=["status", "performed_at"]),
            models.Index(fields=["performed_at"]),
        ]
        permissions = [
            ("post_charge", "Can post charges to the billing system"),
            ("void_charge", "Can void charges"),
            ("export_charge", "Can export charges as CSV"),
        ]

    def __str__(self) -> str:
        code = self.procedure_code or "no CPT"
        return f"Charge {self.pk} {self.order.accession_number} {code} {self.amount}"

    def audit_patient(self) -> Patient:
        return self.patient

    @property
    def transaction_id(self) -> str:
        """FT1-2: the id the billing system knows this charge by."""
        return f"CHG{self.pk}"


class Coverage(models.Model):
    """One insurance policy that pays for a patient's exams (HL7 IN1, in essence)."""

    class Priority(models.IntegerChoices):
        PRIMARY = 1, "Primary"
        SECONDARY = 2, "Secondary"
        TERTIARY = 3, "Tertiary"

    class Relationship(models.TextChoices):
        # HL7 table 0063, the ones a front desk meets.
        SELF = "SEL", "Self"
        SPOUSE = "SPO", "Spouse"
        CHILD = "CHD", "Child"
        PARENT = "PAR", "Parent"
        OTHER = "OTH", "Other"

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="coverages")
    priority = models.PositiveSmallIntegerField(choices=Priority.choices, default=Priority.PRIMARY)
    payer_name = models.CharField(max_length=120)
    plan_name = models.CharField(max_length=120, blank=True)
    policy_number = models.CharField("policy / member number", max_length=64)
    group_number = models.CharField(max_length=64, blank=True)
    subscriber_name = models.CharField(max_length=192, blank=True)
    subscriber_relationship = models.CharField(
        max_length=3, choices=Relationship.choices, default=Relationship.SELF
    )
    valid_from = models.DateField(null=True, blank=True)
    valid_to = models.DateField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["patient_id", "priority", "-valid_from", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(valid_from__isnull=True)
                | Q(valid_to__isnull=True)
                | Q(valid_to__gte=models.F("valid_from")),
                name="coverage_valid_to_after_valid_from",
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_priority_display()}: {self.payer_name} {self.policy_number}"

    def audit_patient(self) -> Patient:
        return self.patient
