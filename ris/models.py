"""Patients and their identifiers, the procedure catalogue, rooms, and orders.

An order holds one or more requested procedures (each one study, with the Study
Instance UID the RIS assigns), and each requested procedure one or more scheduled
procedure steps: what the modality worklist serves (PS3.4 K.6.1).
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.functions import Upper


class Sex(models.TextChoices):
    # DICOM Patient's Sex (0010,0040) and HL7 table 0001, where they agree.
    FEMALE = "F", "Female"
    MALE = "M", "Male"
    OTHER = "O", "Other"
    UNKNOWN = "U", "Unknown"


class Patient(models.Model):
    family_name = models.CharField(max_length=64)
    given_name = models.CharField(max_length=64, blank=True)
    middle_name = models.CharField(max_length=64, blank=True)
    name_prefix = models.CharField(max_length=16, blank=True)
    name_suffix = models.CharField(max_length=16, blank=True)
    birth_date = models.DateField(null=True, blank=True)
    sex = models.CharField(max_length=1, choices=Sex.choices, default=Sex.UNKNOWN)
    phone = models.CharField(max_length=32, blank=True)
    email = models.EmailField(blank=True)
    address = models.TextField(blank=True)
    # Family, given and middle names upper-cased without accents (ris.names.patient_search_key),
    # kept by ris.services: "muller" finds "Müller" on SQLite and PostgreSQL alike.
    search_name = models.CharField(max_length=200, blank=True, editable=False)
    # The patient's own portal account, when they have one.
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="patient_record",
    )
    # Set when this record was merged into another (HL7 A40, or the front desk).
    merged_into = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="merged_records"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["family_name", "given_name", "id"]
        indexes = [
            models.Index(Upper("family_name"), Upper("given_name"), name="patient_name_upper"),
            models.Index(fields=["birth_date"]),
            models.Index(
                fields=["search_name"],
                name="patient_search_name",
                opclasses=["varchar_pattern_ops"],
            ),
        ]

    def __str__(self) -> str:
        return self.display_name

    @property
    def display_name(self) -> str:
        given = " ".join(part for part in (self.given_name, self.middle_name) if part)
        return f"{self.family_name.upper()}, {given}" if given else self.family_name.upper()

    @property
    def dicom_name(self) -> str:
        """Patient's Name as a DICOM PN: Family^Given^Middle^Prefix^Suffix (PS3.5 6.2.1)."""
        parts = [
            self.family_name,
            self.given_name,
            self.middle_name,
            self.name_prefix,
            self.name_suffix,
        ]
        return "^".join(parts).rstrip("^")

    def audit_patient(self) -> Patient:
        return self


class AssigningAuthority(models.Model):
    """Who issued a patient identifier: HL7 CX.4, DICOM Issuer of Patient ID (0010,0021)."""

    namespace_id = models.CharField(max_length=64, unique=True)
    universal_id = models.CharField(max_length=199, blank=True)
    universal_id_type = models.CharField(max_length=16, blank=True)  # ISO, DNS, UUID ...
    description = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["namespace_id"]
        verbose_name_plural = "assigning authorities"

    def __str__(self) -> str:
        return self.namespace_id


class PatientIdentifier(models.Model):
    class Type(models.TextChoices):
        # HL7 table 0203
        MEDICAL_RECORD = "MR", "Medical record number"
        NATIONAL = "NI", "National identifier"
        PATIENT_INTERNAL = "PI", "Patient internal identifier"
        PASSPORT = "PPN", "Passport number"
        INSURANCE = "SS", "Social security / insurance number"

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="identifiers")
    value = models.CharField(max_length=64)
    issuer = models.ForeignKey(AssigningAuthority, on_delete=models.PROTECT, related_name="+")
    type = models.CharField(max_length=4, choices=Type.choices, default=Type.MEDICAL_RECORD)
    # An identifier kept from a record merged into this one: it still finds the patient.
    is_alias = models.BooleanField(default=False)

    class Meta:
        ordering = ["is_alias", "issuer__namespace_id", "value"]
        constraints = [
            models.UniqueConstraint(fields=["issuer", "value"], name="identifier_unique_per_issuer")
        ]
        indexes = [models.Index(fields=["value"])]

    def __str__(self) -> str:
        return f"{self.value} ({self.issuer.namespace_id})"

    def audit_patient(self) -> Patient:
        return self.patient


class ProcedureType(models.Model):
    """One line of the department's procedure catalogue."""

    code = models.CharField(max_length=16, unique=True)
    name = models.CharField(max_length=200)
    modality = models.CharField(max_length=16, db_index=True)  # DICOM Modality (0008,0060)
    body_part = models.CharField(max_length=64, blank=True)
    cpt_code = models.CharField(max_length=16, blank=True)
    default_duration_minutes = models.PositiveIntegerField(default=15)
    price = models.DecimalField(max_digits=10, decimal_places=2, default=0)
    preparation_instructions = models.TextField(blank=True)
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["modality", "name"]

    def __str__(self) -> str:
        return f"{self.code} {self.name}"


class Room(models.Model):
    """An examination room and the modality device in it."""

    name = models.CharField(max_length=64, unique=True)
    modality = models.CharField(max_length=16, db_index=True)
    station_ae_title = models.CharField(max_length=16, unique=True, null=True, blank=True)
    station_name = models.CharField(max_length=16, blank=True)
    location = models.CharField(max_length=64, blank=True)
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Weekday(models.IntegerChoices):
    # Python's date.weekday() numbering.
    MONDAY = 0, "Monday"
    TUESDAY = 1, "Tuesday"
    WEDNESDAY = 2, "Wednesday"
    THURSDAY = 3, "Thursday"
    FRIDAY = 4, "Friday"
    SATURDAY = 5, "Saturday"
    SUNDAY = 6, "Sunday"


class RoomHours(models.Model):
    """One interval in which a room takes patients on a weekday (local time); several a day."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="hours")
    weekday = models.PositiveSmallIntegerField(choices=Weekday.choices)
    opens = models.TimeField()
    closes = models.TimeField()

    class Meta:
        ordering = ["room", "weekday", "opens"]
        verbose_name_plural = "room hours"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(closes__gt=models.F("opens")),
                name="room_hours_close_after_open",
            )
        ]

    def __str__(self) -> str:
        return f"{self.room} {self.get_weekday_display()} {self.opens:%H:%M}-{self.closes:%H:%M}"

    def clean(self) -> None:
        if self.opens is None or self.closes is None:
            return  # the missing field reports itself
        if self.closes <= self.opens:
            raise ValidationError({"closes": "A room must close after it opens."})
        overlapping = RoomHours.objects.filter(
            room_id=self.room_id, weekday=self.weekday, opens__lt=self.closes, closes__gt=self.opens
        ).exclude(pk=self.pk)
        if self.room_id is not None and overlapping.exists():
            raise ValidationError("These hours overlap other hours of the room on that day.")


class Priority(models.TextChoices):
    ROUTINE = "routine", "Routine"
    URGENT = "urgent", "Urgent"
    STAT = "stat", "STAT"


class Order(models.Model):
    class Status(models.TextChoices):
        SCHEDULED = "scheduled", "Scheduled"
        ARRIVED = "arrived", "Arrived"
        IN_PROGRESS = "in_progress", "In progress"
        COMPLETED = "completed", "Completed"
        CANCELLED = "cancelled", "Cancelled"

    accession_number = models.CharField(max_length=16, unique=True)
    placer_order_number = models.CharField(max_length=64, blank=True, db_index=True)
    filler_order_number = models.CharField(max_length=64, blank=True, db_index=True)
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="orders")
    # The name as the HIS sent it (DICOM PN form) and, when they have an account, the user.
    referring_physician_name = models.CharField(max_length=192, blank=True)
    referring_physician = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="referred_orders",
    )
    priority = models.CharField(max_length=8, choices=Priority.choices, default=Priority.ROUTINE)
    reason = models.TextField("clinical indication", blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.SCHEDULED)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    ordered_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Why, by whom and when the order was called off (cancelled, or the patient did not come).
    cancel_reason = models.TextField(blank=True)
    cancelled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    cancelled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-ordered_at", "-id"]
        indexes = [models.Index(fields=["status", "priority"])]
        permissions = [("schedule_order", "Can book, move and cancel bookings")]
        constraints = [
            # One live order per placer order number (ORC-2): two NW racing cannot both win.
            models.UniqueConstraint(
                fields=["placer_order_number"],
                condition=~models.Q(placer_order_number="") & ~models.Q(status="cancelled"),
                name="placer_order_number_unique_while_open",
            )
        ]

    def __str__(self) -> str:
        return f"Order {self.accession_number}"

    def audit_patient(self) -> Patient:
        return self.patient


class RequestedProcedure(models.Model):
    class Status(models.TextChoices):
        SCHEDULED = "scheduled", "Scheduled"
        IN_PROGRESS = "in_progress", "In progress"
        COMPLETED = "completed", "Completed"
        IMAGES_RECEIVED = "images_received", "Images received"
        # Set by the reporting app through ris.services.mark_reported.
        PRELIMINARY_REPORT = "preliminary_report", "Read (preliminary report)"
        REPORTED = "reported", "Reported"
        CANCELLED = "cancelled", "Cancelled"

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="requested_procedures")
    requested_procedure_id = models.CharField(max_length=16)  # (0040,1001)
    procedure_type = models.ForeignKey(ProcedureType, on_delete=models.PROTECT, related_name="+")
    description = models.CharField(max_length=64, blank=True)  # (0032,1060)
    # Assigned when ordered, so images come back already matched (IHE SWF).
    study_instance_uid = models.CharField(max_length=64, unique=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.SCHEDULED)

    class Meta:
        ordering = ["order_id", "requested_procedure_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["order", "requested_procedure_id"], name="requested_procedure_id_per_order"
            )
        ]

    def __str__(self) -> str:
        return f"{self.order.accession_number}/{self.requested_procedure_id} {self.description}"

    def audit_patient(self) -> Patient:
        return self.order.patient


class ScheduledProcedureStep(models.Model):
    class Status(models.TextChoices):
        SCHEDULED = "scheduled", "Scheduled"
        ARRIVED = "arrived", "Arrived"
        IN_PROGRESS = "in_progress", "In progress"
        COMPLETED = "completed", "Completed"
        DISCONTINUED = "discontinued", "Discontinued"
        CANCELLED = "cancelled", "Cancelled"
        NO_SHOW = "no_show", "No show"

    requested_procedure = models.ForeignKey(
        RequestedProcedure, on_delete=models.CASCADE, related_name="steps"
    )
    sps_id = models.CharField(
        "scheduled procedure step ID", max_length=16, unique=True
    )  # (0040,0009)
    modality = models.CharField(max_length=16)
    station_ae_title = models.CharField(max_length=16, blank=True)
    station_name = models.CharField(max_length=16, blank=True)
    room = models.ForeignKey(
        Room, null=True, blank=True, on_delete=models.PROTECT, related_name="steps"
    )
    scheduled_start = models.DateTimeField()
    scheduled_end = models.DateTimeField()
    performing_physician_name = models.CharField(max_length=192, blank=True)
    description = models.CharField(max_length=64, blank=True)  # (0040,0007)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.SCHEDULED)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["scheduled_start", "id"]
        indexes = [
            models.Index(fields=["status", "scheduled_start"]),
            models.Index(fields=["station_ae_title", "scheduled_start"]),
            models.Index(fields=["modality", "scheduled_start"]),
            models.Index(fields=["room", "scheduled_start"]),
        ]
        permissions = [("perform_scheduledprocedurestep", "Can start and complete exams")]

    def __str__(self) -> str:
        return f"SPS {self.sps_id} {self.modality} {self.scheduled_start:%Y-%m-%d %H:%M}"

    def audit_patient(self) -> Patient:
        return self.requested_procedure.order.patient


class NumberSequence(models.Model):
    """A named counter for numbers that must never repeat (accession numbers, SPS ids)."""

    name = models.CharField(max_length=32, unique=True)
    last_value = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name}={self.last_value}"
