"""The HL7 interface's records: every message in and out, and where messages go.

An inbound message is stored in the transaction that applies it, so its row and its
effect commit together; an outbound one is written in the transaction of the change
that causes it (the outbox) and stays until the destination acknowledges it with AA.
"""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from ris.models import Patient

# The message codes (MSH-9.1) a destination may ask for.
OUTBOUND_TYPES = ("ADT", "ORM", "ORU", "DFT")


class CharacterSet(models.TextChoices):
    # HL7 table 0211 values (MSH-18) for what we send.
    UTF8 = "UNICODE UTF-8", "UTF-8"
    LATIN1 = "8859/1", "ISO 8859-1 (Latin-1)"
    ASCII = "ASCII", "ASCII"


CODECS: dict[str, str] = {
    CharacterSet.UTF8: "utf-8",
    CharacterSet.LATIN1: "latin-1",
    CharacterSet.ASCII: "ascii",
}


class Destination(models.Model):
    """A system we send HL7 to over MLLP (the HIS, the EMR, billing)."""

    name = models.CharField(max_length=64, unique=True)
    host = models.CharField(max_length=255)
    port = models.PositiveIntegerField(validators=[MinValueValidator(1), MaxValueValidator(65535)])
    # Comma-separated message codes from OUTBOUND_TYPES, e.g. "ORU,DFT".
    message_types = models.CharField(max_length=64)
    enabled = models.BooleanField(default=True)
    # MSH-5 and MSH-6 of what we send there; our own are MSH-3 and MSH-4 from settings.
    receiving_application = models.CharField(max_length=180, blank=True)
    receiving_facility = models.CharField(max_length=180, blank=True)
    character_set = models.CharField(
        max_length=16, choices=CharacterSet.choices, default=CharacterSet.UTF8
    )
    # Who delivers to it now: one sender at a time keeps the messages in order.
    lease_owner = models.CharField(max_length=64, blank=True, editable=False)
    lease_until = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.host}:{self.port})"

    @property
    def types(self) -> list[str]:
        return [code.strip().upper() for code in self.message_types.split(",") if code.strip()]

    def wants(self, message_code: str) -> bool:
        return self.enabled and message_code.upper() in self.types


class SearchFields(models.Model):
    """What a message is about, kept as text so the interface page can search it."""

    patient = models.ForeignKey(
        Patient, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    patient_name = models.CharField(max_length=200, blank=True)
    patient_identifiers = models.CharField(max_length=255, blank=True)
    order_numbers = models.CharField(max_length=255, blank=True)

    class Meta:
        abstract = True

    def audit_patient(self) -> Patient | None:
        return self.patient


class InboundMessage(SearchFields):
    """One message as it arrived, what we did with it, and the ACK we answered."""

    class Status(models.TextChoices):
        RECEIVED = "received", "Received"
        ACCEPTED = "accepted", "Accepted (AA)"
        ERROR = "error", "Error in content (AE)"
        REJECTED = "rejected", "Rejected (AR)"
        FAILED = "failed", "Failed: internal error (AE)"
        DUPLICATE = "duplicate", "Duplicate: answered with the first ACK"

    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    peer = models.CharField(max_length=255, blank=True)
    sending_application = models.CharField(max_length=180, blank=True)
    sending_facility = models.CharField(max_length=180, blank=True)
    message_type = models.CharField(max_length=32, blank=True, db_index=True)  # "ADT^A04"
    control_id = models.CharField(max_length=199, blank=True)  # MSH-10
    version = models.CharField(max_length=16, blank=True)
    raw = models.TextField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RECEIVED)
    ack_code = models.CharField(max_length=2, blank=True)
    ack = models.TextField(blank=True)
    error = models.TextField(blank=True)
    error_location = models.CharField(max_length=32, blank=True)
    # A message repeated with the same control id points at the one first received.
    duplicate_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="duplicates"
    )
    attempts = models.PositiveIntegerField(default=1)
    reprocessed_by = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["-received_at", "-id"]
        constraints = [
            # MSH-10 identifies a message for its sender: the first one is the one applied.
            models.UniqueConstraint(
                fields=["sending_application", "sending_facility", "control_id"],
                condition=Q(duplicate_of__isnull=True) & ~Q(control_id=""),
                name="hl7_inbound_control_id_once_per_sender",
            )
        ]
        indexes = [
            models.Index(fields=["status", "received_at"]),
            models.Index(fields=["control_id"]),
        ]
        permissions = [("reprocess_inboundmessage", "Can re-process a failed inbound message")]

    def __str__(self) -> str:
        return f"in {self.message_type or '?'} {self.control_id or '-'} ({self.status})"


class OutboundMessage(SearchFields):
    """One message for one destination: waits in the outbox until answered AA."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RETRYING = "retrying", "Retrying"
        DELIVERED = "delivered", "Delivered"

    destination = models.ForeignKey(Destination, on_delete=models.PROTECT, related_name="messages")
    message_type = models.CharField(max_length=32, db_index=True)  # "ORU^R01"
    control_id = models.CharField(max_length=20, unique=True)
    raw = models.TextField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)
    ack_code = models.CharField(max_length=2, blank=True)
    ack = models.TextField(blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["destination", "status", "id"]),
            models.Index(fields=["status", "next_attempt_at"]),
        ]
        permissions = [("retry_outboundmessage", "Can retry an undelivered outbound message")]

    def __str__(self) -> str:
        return f"out {self.message_type} {self.control_id} to {self.destination_id} ({self.status})"
