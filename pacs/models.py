"""The archive's index: studies, series and instances, with what C-FIND and QIDO match on.

Header values are kept as received (DICOM string forms) so that queries answer from
the index alone; dates are also kept as dates for range matching.
"""

from __future__ import annotations

from django.db import models

from ris.models import Patient, RequestedProcedure


class DicomNode(models.Model):
    """Another DICOM application entity we know: a modality, workstation or archive."""

    ae_title = models.CharField("AE title", max_length=16, unique=True)
    host = models.CharField(max_length=255)
    port = models.PositiveIntegerField()
    may_store = models.BooleanField(default=True, help_text="May send us instances (C-STORE).")
    may_query = models.BooleanField(default=True, help_text="May query (C-FIND).")
    may_retrieve = models.BooleanField(
        default=True, help_text="May retrieve (C-MOVE, C-GET) and be a C-MOVE destination."
    )
    description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["ae_title"]
        verbose_name = "DICOM node"

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class Study(models.Model):
    study_instance_uid = models.CharField(max_length=64, unique=True)
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="studies")
    # The order's requested procedure this study was matched to, once reconciled.
    requested_procedure = models.ForeignKey(
        RequestedProcedure, null=True, blank=True, on_delete=models.SET_NULL, related_name="studies"
    )
    # Patient module as received in the headers (PS3.4 C.6.1.1.2).
    patient_name = models.CharField(max_length=324, blank=True)
    # Upper-cased copy for case-insensitive PN matching with an index a LIKE prefix can use.
    patient_name_match = models.CharField(max_length=324, blank=True)
    dicom_patient_id = models.CharField("Patient ID", max_length=64, blank=True)
    issuer_of_patient_id = models.CharField(max_length=64, blank=True)
    patient_birth_date = models.DateField(null=True, blank=True)
    patient_sex = models.CharField(max_length=16, blank=True)
    # Study module.
    study_date = models.DateField(null=True, blank=True)
    study_time = models.CharField(max_length=16, blank=True)  # TM as received
    accession_number = models.CharField(max_length=16, blank=True, db_index=True)
    study_id = models.CharField(max_length=16, blank=True)
    study_description = models.CharField(max_length=64, blank=True)
    referring_physician_name = models.CharField(max_length=324, blank=True)
    # Backslash-delimited on both ends ("\\CT\\SR\\"), so one LIKE finds a modality.
    modalities_in_study = models.CharField(max_length=128, blank=True)
    specific_character_set = models.CharField(max_length=128, blank=True)
    number_of_series = models.PositiveIntegerField(default=0)
    number_of_instances = models.PositiveIntegerField(default=0)
    size_bytes = models.PositiveBigIntegerField(default=0)
    received_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-study_date", "-id"]
        verbose_name_plural = "studies"
        indexes = [
            models.Index(fields=["study_date"]),
            # PostgreSQL: pattern ops so that LIKE 'SMITH%' uses the index whatever the collation.
            models.Index(
                fields=["patient_name_match"],
                name="study_pn_match",
                opclasses=["varchar_pattern_ops"],
            ),
            models.Index(
                fields=["dicom_patient_id", "issuer_of_patient_id"], name="study_patient_identity"
            ),
            models.Index(fields=["received_at"]),
        ]

    def __str__(self) -> str:
        return f"Study {self.study_instance_uid}"

    def audit_patient(self) -> Patient:
        return self.patient


class Series(models.Model):
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="series")
    series_instance_uid = models.CharField(max_length=64, unique=True)
    modality = models.CharField(max_length=16, db_index=True)
    series_number = models.IntegerField(null=True, blank=True)
    series_description = models.CharField(max_length=64, blank=True)
    body_part_examined = models.CharField(max_length=16, blank=True)
    series_date = models.DateField(null=True, blank=True)
    series_time = models.CharField(max_length=16, blank=True)
    station_name = models.CharField(max_length=16, blank=True)
    institution_name = models.CharField(max_length=64, blank=True)
    sending_ae_title = models.CharField(max_length=16, blank=True)
    number_of_instances = models.PositiveIntegerField(default=0)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["study_id", "series_number", "id"]
        verbose_name_plural = "series"

    def __str__(self) -> str:
        return f"Series {self.series_instance_uid}"

    def audit_patient(self) -> Patient:
        return self.study.patient


class Instance(models.Model):
    series = models.ForeignKey(Series, on_delete=models.CASCADE, related_name="instances")
    sop_instance_uid = models.CharField(max_length=64, unique=True)
    sop_class_uid = models.CharField(max_length=64, db_index=True)
    instance_number = models.IntegerField(null=True, blank=True)
    number_of_frames = models.PositiveIntegerField(null=True, blank=True)
    rows = models.PositiveIntegerField(null=True, blank=True)
    columns = models.PositiveIntegerField(null=True, blank=True)
    bits_allocated = models.PositiveSmallIntegerField(null=True, blank=True)
    transfer_syntax_uid = models.CharField(max_length=64)
    # Path of the stored file, relative to STORAGE_DIR.
    file_path = models.CharField(max_length=512)
    file_size = models.PositiveBigIntegerField(default=0)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["series_id", "instance_number", "id"]

    def __str__(self) -> str:
        return f"Instance {self.sop_instance_uid}"

    def audit_patient(self) -> Patient:
        return self.series.study.patient


class StorageCommitment(models.Model):
    """A Storage Commitment request (PS3.4 J.3.2) and the sending of its result (J.3.3)."""

    class Status(models.TextChoices):
        PENDING = "pending", "result not sent yet"
        SENT = "sent", "result sent"
        FAILED = "failed", "result could not be sent"

    transaction_uid = models.CharField("Transaction UID", max_length=64)
    calling_ae_title = models.CharField("requested by", max_length=16)
    # Our AE title on the request's association: the result goes out under it (J.3.3.1.2).
    called_ae_title = models.CharField("requested of", max_length=16)
    source_address = models.CharField(max_length=255, blank=True)
    # [[ReferencedSOPClassUID, ReferencedSOPInstanceUID], ...] in the order requested.
    references = models.JSONField(default=list)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    # Of the result sent: 1 all committed, 2 failures exist; the failures' UIDs and reasons.
    event_type_id = models.PositiveSmallIntegerField("Event Type ID", null=True, blank=True)
    failures = models.JSONField(default=list, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    # A sender holds the row until then, so that a retry and the sweep never send twice.
    claimed_until = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    received_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["calling_ae_title", "transaction_uid"], name="commitment_transaction_once"
            )
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="commitment_due")]

    def __str__(self) -> str:
        return f"Storage commitment {self.transaction_uid} from {self.calling_ae_title}"


class ReconciliationItem(models.Model):
    """A received study that could not be matched to its order, waiting for a person."""

    class Status(models.TextChoices):
        OPEN = "open", "open"
        RESOLVED = "resolved", "resolved"
        REJECTED = "rejected", "rejected"

    class Reason(models.TextChoices):
        NO_ORDER = "no-order", "no order found"
        PATIENT_MISMATCH = "patient-mismatch", "patient identity differs from the order's"
        SERIES_MISMATCH = "series-mismatch", "a later series names another patient"
        ORDER_CANCELLED = "order-cancelled", "the order found is cancelled"

    class Resolution(models.TextChoices):
        LINKED = "linked", "linked to an order"
        ASSIGNED = "assigned", "assigned to another patient"
        UNSCHEDULED = "unscheduled", "marked unscheduled (order created)"
        REJECTED = "rejected", "rejected"

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="reconciliation_items")
    # The order found by Study Instance UID or accession, when one was found.
    requested_procedure = models.ForeignKey(
        RequestedProcedure, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reason = models.CharField(max_length=24, choices=Reason.choices)
    detail = models.TextField(blank=True)
    # Both sides attribute by attribute, as DICOM strings: {"PatientID": ..., ...}.
    received = models.JSONField(default=dict)
    expected = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.OPEN)
    resolution = models.CharField(max_length=16, choices=Resolution.choices, blank=True)
    resolved_by = models.ForeignKey(
        "auth.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    # The study as it was before the resolution (patient, order, identity), for undo.
    before = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["study"],
                condition=models.Q(status="open"),
                name="reconciliation_one_open_item_per_study",
            )
        ]
        indexes = [models.Index(fields=["status", "created_at"], name="reconciliation_queue")]

    def __str__(self) -> str:
        return f"Reconciliation of study {self.study_id}: {self.reason}"

    def audit_patient(self) -> Patient:
        return self.study.patient


class HeaderRewrite(models.Model):
    """A study whose stored headers are to be rewritten from its index copies (due at DUE_AT)."""

    study = models.OneToOneField(Study, on_delete=models.CASCADE, related_name="header_rewrite")
    # ReasonForTheAttributeModification (0400,0565): COERCE or CORRECT (PS3.3 C.12.1).
    reason = models.CharField(max_length=16, default="COERCE")
    due_at = models.DateTimeField(db_index=True)
    requested_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Header rewrite of study {self.study_id} ({self.reason})"
