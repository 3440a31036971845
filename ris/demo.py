"""Demo data for a fresh install: one user per role, the catalogue, rooms, patients, today's list.

Everything goes through the same services the front desk and the HIS use. Running it
again changes nothing; run on a later day, it books that day's list (the rest is
already there). The patients are synthetic: made-up names, identifiers under "DEMO".
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from core import audit, roles
from core.services import sync_roles
from ris import services
from ris.catalogue import ImportResult, import_procedure_catalogue
from ris.models import (
    AssigningAuthority,
    Order,
    Patient,
    PatientIdentifier,
    Priority,
    ProcedureType,
    Room,
    RoomHours,
    Sex,
    Weekday,
)

CATALOGUE_FILE = Path(__file__).resolve().parent / "fixtures" / "procedures.csv"
DEMO_ISSUER = "DEMO"
PLACER_PREFIX = "DEMO"  # placer order numbers DEMO-yyyymmdd-nn: one demo list per day


class DemoRefused(RuntimeError):
    """Seeding demo logins with known passwords outside DEBUG, without being told to."""


@dataclass(frozen=True)
class DemoUser:
    username: str
    role: str
    first_name: str
    last_name: str
    is_staff: bool = False

    @property
    def password(self) -> str:
        return f"demo-{self.username}"


DEMO_USERS = (
    DemoUser("frontdesk", roles.FRONT_DESK, "Demo", "Frontdesk"),
    DemoUser("tech", roles.TECHNOLOGIST, "Demo", "Technologist"),
    DemoUser("radiologist", roles.RADIOLOGIST, "Demo", "Radiologist"),
    DemoUser("typist", roles.TRANSCRIPTIONIST, "Demo", "Typist"),
    DemoUser("referrer", roles.REFERRING_PHYSICIAN, "Demo", "Referrer"),
    DemoUser("patient", roles.PATIENT, "Demo", "Patient"),
    DemoUser("admin", roles.ADMINISTRATOR, "Demo", "Admin", is_staff=True),
)
REFERRER_USERNAME = "referrer"
PATIENT_USERNAME = "patient"


@dataclass(frozen=True)
class DemoRoom:
    name: str
    modality: str
    ae_title: str
    location: str


DEMO_ROOMS = (
    DemoRoom("CT 1", "CT", "CT1", "Radiology, level 0"),
    DemoRoom("MR 1", "MR", "MR1", "Radiology, level 0"),
    DemoRoom("US 1", "US", "US1", "Radiology, level 1"),
    DemoRoom("DX 1", "DX", "DX1", "Radiology, level 1"),
    DemoRoom("CR 1", "CR", "CR1", "Emergency department"),
    DemoRoom("MG 1", "MG", "MG1", "Breast centre"),
    DemoRoom("PET-CT", "PT", "PETCT1", "Nuclear medicine, level -1"),
    DemoRoom("NM 1", "NM", "NM1", "Nuclear medicine, level -1"),
    DemoRoom("Endoscopy 1", "ES", "ENDO1", "Endoscopy suite"),
)


# Opening hours (local time): weekdays with a lunch break; the emergency room all week.
WEEKDAYS = (
    Weekday.MONDAY,
    Weekday.TUESDAY,
    Weekday.WEDNESDAY,
    Weekday.THURSDAY,
    Weekday.FRIDAY,
)
OFFICE_HOURS = ((dt.time(7, 30), dt.time(12, 30)), (dt.time(13, 30), dt.time(18, 0)))
ROUND_THE_CLOCK_ROOMS = {"CR 1": (dt.time(0, 0), dt.time(23, 59))}


@dataclass(frozen=True)
class DemoPatient:
    mrn: str
    family_name: str
    given_name: str
    birth_date: dt.date
    sex: str


# Made-up names that no one would take for a real person.
DEMO_PATIENTS = (
    DemoPatient("DEMO0001", "Testperson", "Alex", dt.date(1968, 3, 14), Sex.FEMALE),
    DemoPatient("DEMO0002", "Example", "Robin", dt.date(1975, 7, 2), Sex.MALE),
    DemoPatient("DEMO0003", "Sample", "Jordan", dt.date(1982, 11, 23), Sex.FEMALE),
    DemoPatient("DEMO0004", "Specimen", "Sam", dt.date(1959, 5, 8), Sex.MALE),
    DemoPatient("DEMO0005", "Placeholder", "Kim", dt.date(1990, 1, 30), Sex.FEMALE),
    DemoPatient("DEMO0006", "Mockup", "Charlie", dt.date(2001, 9, 12), Sex.MALE),
    DemoPatient("DEMO0007", "Fictional", "Morgan", dt.date(1947, 12, 4), Sex.FEMALE),
    DemoPatient("DEMO0008", "Exemplar", "Taylor", dt.date(1964, 6, 19), Sex.OTHER),
)
# The demo "patient" login is this patient's own portal account.
PATIENT_USER_MRN = "DEMO0001"

# A physician known only by name, as an HIS would send it (DICOM PN, PS3.5 6.2.1).
OTHER_REFERRER_NAME = "Sample^Casey^^Dr"


@dataclass(frozen=True)
class DemoBooking:
    mrn: str
    procedure_code: str
    room: str
    start: dt.time
    reason: str
    priority: str = Priority.ROUTINE
    by_demo_referrer: bool = False


DEMO_BOOKINGS = (
    DemoBooking(
        "DEMO0002",
        "CTHEADWO",
        "CT 1",
        dt.time(8, 0),
        "Headache for three weeks",
        by_demo_referrer=True,
    ),
    DemoBooking("DEMO0003", "CTAPWC", "CT 1", dt.time(8, 30), "Right lower quadrant pain"),
    DemoBooking(
        "DEMO0007",
        "CTPECTA",
        "CT 1",
        dt.time(9, 30),
        "Acute dyspnoea, raised D-dimer",
        priority=Priority.STAT,
    ),
    DemoBooking(
        "DEMO0001",
        "MRBRAINWWO",
        "MR 1",
        dt.time(8, 0),
        "Follow-up of known meningioma",
        by_demo_referrer=True,
    ),
    DemoBooking("DEMO0004", "MRLSPWO", "MR 1", dt.time(9, 0), "Low back pain with left sciatica"),
    DemoBooking(
        "DEMO0005",
        "USABDCOMP",
        "US 1",
        dt.time(8, 15),
        "Abnormal liver function tests",
        by_demo_referrer=True,
    ),
    DemoBooking("DEMO0006", "DXCHEST2V", "DX 1", dt.time(8, 0), "Persistent cough"),
    DemoBooking("DEMO0004", "CRHAND3V", "CR 1", dt.time(10, 30), "Fall on the outstretched hand"),
    DemoBooking("DEMO0003", "MGSCRBIL", "MG 1", dt.time(9, 0), "Screening"),
    DemoBooking(
        "DEMO0001",
        "PTFDGSKT",
        "PET-CT",
        dt.time(10, 0),
        "Staging of a lung nodule",
        by_demo_referrer=True,
    ),
    DemoBooking("DEMO0008", "NMBONEWB", "NM 1", dt.time(11, 0), "Bone pain, known prostate cancer"),
    DemoBooking("DEMO0005", "ESCOLON", "Endoscopy 1", dt.time(11, 0), "Iron deficiency anaemia"),
)


@dataclass
class DemoSummary:
    users: list[str] = field(default_factory=list)
    procedures: ImportResult = field(default_factory=ImportResult)
    rooms: list[str] = field(default_factory=list)
    room_hours: list[str] = field(default_factory=list)  # rooms given opening hours
    patients: list[str] = field(default_factory=list)
    orders: list[str] = field(default_factory=list)  # accession numbers
    patient_linked: bool = False

    @property
    def changed(self) -> bool:
        return bool(
            self.users
            or self.procedures.created
            or self.procedures.updated
            or self.rooms
            or self.room_hours
            or self.patients
            or self.orders
            or self.patient_linked
        )

    def __str__(self) -> str:
        return "\n".join(
            [
                f"users created: {len(self.users)}",
                f"procedures: {self.procedures}",
                f"rooms created: {len(self.rooms)}",
                f"rooms given opening hours: {len(self.room_hours)}",
                f"patients registered: {len(self.patients)}",
                f"orders booked: {len(self.orders)}",
                f"patient portal account linked: {'yes' if self.patient_linked else 'no'}",
            ]
        )


_SYSTEM: dict[str, Any] = {"actor": None, "channel": audit.Channel.SYSTEM}


@transaction.atomic
def seed_demo(*, force: bool = False, today: dt.date | None = None) -> DemoSummary:
    """Create the demo users, catalogue, rooms, patients and today's orders, where missing."""
    if not settings.DEBUG and not force:
        raise DemoRefused("DEBUG is off: refusing to create demo logins with known passwords")
    today = today or timezone.localdate()
    summary = DemoSummary()
    sync_roles()
    users = _ensure_users(summary)
    summary.procedures = import_procedure_catalogue(CATALOGUE_FILE)
    _ensure_rooms(summary)
    _ensure_room_hours(summary)
    patients = _ensure_patients(summary)
    patient_user = users[PATIENT_USERNAME]
    if not Patient.objects.filter(user=patient_user).exists():
        services.grant_patient_access(patients[PATIENT_USER_MRN], patient_user)
        summary.patient_linked = True
    _book_day(today, patients, users[REFERRER_USERNAME], summary)
    return summary


def _ensure_users(summary: DemoSummary) -> dict[str, Any]:
    user_model = get_user_model()
    users = {}
    for demo in DEMO_USERS:
        user = user_model.objects.filter(username=demo.username).first()
        if user is None:
            user = user_model.objects.create_user(
                demo.username,
                email=f"{demo.username}@example.org",
                password=demo.password,
                first_name=demo.first_name,
                last_name=demo.last_name,
                is_staff=demo.is_staff,
            )
            summary.users.append(demo.username)
        # An existing account keeps its password and flags; it only gets its role.
        user.groups.add(Group.objects.get(name=demo.role))
        users[demo.username] = user
    return users


def _ensure_rooms(summary: DemoSummary) -> None:
    for demo in DEMO_ROOMS:
        taken = Room.objects.filter(Q(name=demo.name) | Q(station_ae_title=demo.ae_title))
        if taken.exists():
            continue
        Room.objects.create(
            name=demo.name,
            modality=demo.modality,
            station_ae_title=demo.ae_title,
            station_name=demo.ae_title,
            location=demo.location,
        )
        summary.rooms.append(demo.name)


def _ensure_room_hours(summary: DemoSummary) -> None:
    """Give each demo room without opening hours the demo ones; hours set by hand stay."""
    rooms = Room.objects.filter(name__in=[demo.name for demo in DEMO_ROOMS], hours__isnull=True)
    for room in rooms:
        if room.name in ROUND_THE_CLOCK_ROOMS:
            opens, closes = ROUND_THE_CLOCK_ROOMS[room.name]
            rows = [
                RoomHours(room=room, weekday=day, opens=opens, closes=closes) for day in Weekday
            ]
        else:
            rows = [
                RoomHours(room=room, weekday=day, opens=opens, closes=closes)
                for day in WEEKDAYS
                for opens, closes in OFFICE_HOURS
            ]
        RoomHours.objects.bulk_create(rows)
        summary.room_hours.append(room.name)


def _ensure_patients(summary: DemoSummary) -> dict[str, Patient]:
    AssigningAuthority.objects.get_or_create(
        namespace_id=DEMO_ISSUER, defaults={"description": "Synthetic demo patients"}
    )
    patients = {}
    for demo in DEMO_PATIENTS:
        held = PatientIdentifier.objects.filter(issuer__namespace_id=DEMO_ISSUER, value=demo.mrn)
        identifier = held.select_related("patient").first()
        if identifier is not None:
            patients[demo.mrn] = identifier.patient
            continue
        data = services.PatientInput(
            family_name=demo.family_name,
            given_name=demo.given_name,
            birth_date=demo.birth_date,
            sex=demo.sex,
            email=f"{demo.given_name}.{demo.family_name}@example.org".lower(),
            identifiers=[services.IdentifierInput(value=demo.mrn, issuer=DEMO_ISSUER)],
        )
        patients[demo.mrn] = services.register_patient(data, **_SYSTEM)
        summary.patients.append(demo.mrn)
    return patients


def _book_day(
    today: dt.date, patients: dict[str, Patient], referrer: Any, summary: DemoSummary
) -> None:
    referrer_name = f"{referrer.last_name}^{referrer.first_name}^^Dr"
    rooms = {
        room.name: room for room in Room.objects.filter(name__in=[b.room for b in DEMO_BOOKINGS])
    }
    procedures = {
        procedure.code: procedure
        for procedure in ProcedureType.objects.filter(
            code__in=[b.procedure_code for b in DEMO_BOOKINGS]
        )
    }
    for number, demo in enumerate(DEMO_BOOKINGS, start=1):
        placer = f"{PLACER_PREFIX}-{today:%Y%m%d}-{number:02d}"
        if Order.objects.filter(placer_order_number=placer).exists():
            continue
        booking = services.BookingInput(
            patient=patients[demo.mrn],
            procedure_type=procedures[demo.procedure_code],
            scheduled_start=timezone.make_aware(dt.datetime.combine(today, demo.start)),
            room=rooms.get(demo.room),
            referring_physician_name=referrer_name
            if demo.by_demo_referrer
            else OTHER_REFERRER_NAME,
            referring_physician=referrer if demo.by_demo_referrer else None,
            priority=demo.priority,
            reason=demo.reason,
            placer_order_number=placer,
        )
        order = services.book_exam(booking, **_SYSTEM)
        summary.orders.append(order.accession_number)
