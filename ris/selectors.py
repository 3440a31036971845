"""Reads of the RIS: the day's schedule, patient and order lists narrowed to what a user may see."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db.models import (
    BooleanField,
    Case,
    ExpressionWrapper,
    Prefetch,
    Q,
    QuerySet,
    Value,
    When,
)
from django.utils import timezone

from core.permissions import can, visible
from ris.models import (
    Order,
    Patient,
    PatientIdentifier,
    Priority,
    ProcedureType,
    RequestedProcedure,
    Room,
    RoomHours,
    ScheduledProcedureStep,
)
from ris.names import search_key

# Most probable duplicates shown for one rule, and catalogue lines shown for one search.
DUPLICATE_LIMIT = 10
PROCEDURE_CHOICES_LIMIT = 25


# Requested procedure states that say the images are in (reporting comes after them).
IMAGES_ARRIVED_STATES = (
    RequestedProcedure.Status.IMAGES_RECEIVED,
    RequestedProcedure.Status.PRELIMINARY_REPORT,
    RequestedProcedure.Status.REPORTED,
)
# Steps whose patient is expected but the exam not begun.
WAITING_STEP_STATES = (
    ScheduledProcedureStep.Status.SCHEDULED,
    ScheduledProcedureStep.Status.ARRIVED,
)


def _day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = timezone.make_aware(dt.datetime.combine(day, dt.time.min))
    return start, start + dt.timedelta(days=1)


def steps_for_day(
    day: dt.date | None = None, *, room_id: int | None = None
) -> QuerySet[ScheduledProcedureStep]:
    """Steps starting on DAY (local time) with patient and procedure, less the cancelled ones."""
    start, end = _day_bounds(day or timezone.localdate())
    # Performed, yet no images matched to its order after EXAM_IMAGES_EXPECTED_MINUTES:
    # the technologist should look (images not sent, or sent under another identity).
    waited = timezone.now() - dt.timedelta(minutes=settings.EXAM_IMAGES_EXPECTED_MINUTES)
    images_overdue = Q(
        status=ScheduledProcedureStep.Status.COMPLETED,
        updated_at__lt=waited,
    ) & ~Q(requested_procedure__status__in=IMAGES_ARRIVED_STATES)
    # Still waiting EXAM_LATE_MINUTES after the booked start: the patient is late.
    due = timezone.now() - dt.timedelta(minutes=settings.EXAM_LATE_MINUTES)
    late = Q(status__in=WAITING_STEP_STATES, scheduled_start__lt=due)
    steps = (
        ScheduledProcedureStep.objects.filter(scheduled_start__gte=start, scheduled_start__lt=end)
        .exclude(status=ScheduledProcedureStep.Status.CANCELLED)
        .annotate(
            images_overdue=ExpressionWrapper(images_overdue, output_field=BooleanField()),
            late=ExpressionWrapper(late, output_field=BooleanField()),
        )
        .select_related(
            "room",
            "requested_procedure__procedure_type",
            "requested_procedure__order__patient",
        )
        .order_by("scheduled_start", "id")
    )
    if room_id is not None:
        steps = steps.filter(room_id=room_id)
    return steps


def _with_identifiers(patients: QuerySet[Patient]) -> QuerySet[Patient]:
    primary = PatientIdentifier.objects.filter(is_alias=False).select_related("issuer")
    return patients.prefetch_related(Prefetch("identifiers", queryset=primary))


# What separates the words of a typed name: "Muller, Hans" and "MULLER^HANS" are two words.
_WORD_SEPARATORS = re.compile(r"[\s,;^]+")
# How a birth date may be typed into the patient search box.
BIRTH_DATE_FORMATS = ("%Y-%m-%d", "%d.%m.%Y", "%d/%m/%Y", "%Y%m%d")


def parse_birth_date(text: str) -> dt.date | None:
    """Read TEXT as a birth date in one of BIRTH_DATE_FORMATS, or return None."""
    for fmt in BIRTH_DATE_FORMATS:
        try:
            return dt.datetime.strptime(text.strip(), fmt).date()  # noqa: DTZ007 a date, no time
        except ValueError:
            continue
    return None


def _name_condition(text: str) -> Q:
    """Every word of TEXT somewhere in the folded name: "muller hans" finds "Hans Müller"."""
    condition = Q()
    for word in _WORD_SEPARATORS.split(search_key(text)):
        if not word:
            continue
        condition &= Q(search_name__contains=word)
    return condition


def _identifier_condition(text: str) -> Q:
    holders = PatientIdentifier.objects.filter(value__iexact=text.strip()).values("patient_id")
    return Q(pk__in=holders)


def patients_visible_to(
    user: Any, query: str = "", *, birth_date: dt.date | None = None
) -> QuerySet[Patient]:
    """Active patients USER may see matching QUERY (name, identifier or birth date) and BIRTH_DATE.

    A name matches in part, whatever the case and accents; an identifier matches whole.
    """
    patients = visible(user, "ris.view_patient", Patient.objects.filter(merged_into__isnull=True))
    query = query.strip()
    if query:
        typed_date = parse_birth_date(query)
        if typed_date is not None:
            patients = patients.filter(Q(birth_date=typed_date) | _identifier_condition(query))
        else:
            patients = patients.filter(_name_condition(query) | _identifier_condition(query))
    if birth_date is not None:
        patients = patients.filter(birth_date=birth_date)
    return _with_identifiers(patients)


@dataclass(frozen=True)
class ProbableDuplicate:
    """An active patient who may be the one being registered, and why."""

    patient: Patient
    reason: str


def probable_duplicates(
    *,
    family_name: str,
    given_name: str = "",
    birth_date: dt.date | None = None,
    identifiers: list[tuple[str, str]] | None = None,
    exclude_pk: int | None = None,
) -> list[ProbableDuplicate]:
    """Active patients with the same folded name and birth date, or an identifier value
    held under another issuer; IDENTIFIERS are (value, issuer) pairs."""
    found: dict[int, ProbableDuplicate] = {}
    active = Patient.objects.filter(merged_into__isnull=True)
    if exclude_pk is not None:
        active = active.exclude(pk=exclude_pk)
    key = search_key(family_name, given_name)
    if key:
        same_name = active.filter(Q(search_name=key) | Q(search_name__startswith=f"{key} "))
        if birth_date is not None:
            same_name = same_name.filter(birth_date=birth_date)
        for patient in same_name[:DUPLICATE_LIMIT]:
            born = f" born {birth_date:%Y-%m-%d}" if birth_date else ""
            found[patient.pk] = ProbableDuplicate(patient, f"same name{born}")
    for value, issuer in identifiers or []:
        held = (
            PatientIdentifier.objects.filter(
                value__iexact=value.strip(), patient__in=active.values("pk")
            )
            .exclude(issuer__namespace_id=issuer.strip())
            .select_related("issuer", "patient")
        )
        for identifier in held[:DUPLICATE_LIMIT]:
            found.setdefault(
                identifier.patient_id,
                ProbableDuplicate(
                    identifier.patient,
                    f"identifier {identifier.value} held under issuer {identifier.issuer}",
                ),
            )
    return list(found.values())


def orders_visible_to(user: Any) -> QuerySet[Order]:
    """Orders USER may see: all of them with the role, else only those granted (their referrals)."""
    orders = visible(user, "ris.view_order", Order.objects.all())
    return orders.select_related("patient").prefetch_related(
        "requested_procedures__procedure_type", "requested_procedures__steps"
    )


def patient_orders(patient: Patient) -> QuerySet[Order]:
    """PATIENT's orders, newest first, with their procedures and steps (rooms too)."""
    return (
        Order.objects.filter(patient=patient)
        .prefetch_related(
            "requested_procedures__procedure_type",
            Prefetch(
                "requested_procedures__steps",
                queryset=ScheduledProcedureStep.objects.select_related("room"),
            ),
        )
        .order_by("-ordered_at")
    )


def procedures_matching(query: str = "") -> QuerySet[ProcedureType]:
    """Active catalogue lines whose code or name holds every word of QUERY, by code."""
    procedures = ProcedureType.objects.filter(active=True)
    for word in query.split():
        procedures = procedures.filter(Q(code__icontains=word) | Q(name__icontains=word))
    return procedures.order_by("code")[:PROCEDURE_CHOICES_LIMIT]


def order_for_instructions(user: Any, pk: int) -> Order | None:
    """Order PK with its patient, procedures, steps and rooms, if USER may see it."""
    return (
        visible(user, "ris.view_order", Order.objects.all())
        .filter(pk=pk)
        .select_related("patient")
        .prefetch_related(
            "requested_procedures__procedure_type",
            Prefetch(
                "requested_procedures__steps",
                queryset=ScheduledProcedureStep.objects.select_related("room"),
            ),
        )
        .first()
    )


def patient_orders_visible_to(user: Any, patient: Patient) -> QuerySet[Order]:
    """PATIENT's orders that USER may see: all with the role, else those granted (referrals)."""
    orders = patient_orders(patient)
    if not can(user, "ris.view_order"):
        orders = orders.filter(
            pk__in=visible(user, "ris.view_order", Order.objects.all()).values("pk")
        )
    return orders


# The scheduling calendar: opening hours, bookings and free time of rooms, per day.

# Steps that hold their room's time; cancelled, no-show and discontinued ones free it.
BUSY_STEP_STATES = (
    ScheduledProcedureStep.Status.SCHEDULED,
    ScheduledProcedureStep.Status.ARRIVED,
    ScheduledProcedureStep.Status.IN_PROGRESS,
    ScheduledProcedureStep.Status.COMPLETED,
)
Interval = tuple[dt.datetime, dt.datetime]
# STAT first, then urgent, then routine.
PRIORITY_RANK = Case(
    When(priority=Priority.STAT, then=Value(0)),
    When(priority=Priority.URGENT, then=Value(1)),
    default=Value(2),
)


def room_hours(rooms: list[Room]) -> dict[int, list[RoomHours]]:
    """The opening hours of ROOMS, by room id, in one query."""
    hours: dict[int, list[RoomHours]] = {room.pk: [] for room in rooms}
    for row in RoomHours.objects.filter(room__in=rooms).order_by("weekday", "opens"):
        hours[row.room_id].append(row)
    return hours


def opening_intervals(hours: list[RoomHours], day: dt.date) -> list[Interval]:
    """The intervals of DAY (aware, local time) in which a room with HOURS is open."""
    return [
        (
            timezone.make_aware(dt.datetime.combine(day, row.opens)),
            timezone.make_aware(dt.datetime.combine(day, row.closes)),
        )
        for row in sorted(hours, key=lambda row: row.opens)
        if row.weekday == day.weekday()
    ]


def busy_steps(
    rooms: list[Room], start: dt.datetime, end: dt.datetime
) -> QuerySet[ScheduledProcedureStep]:
    """Steps holding time in ROOMS that overlaps START-END."""
    return ScheduledProcedureStep.objects.filter(
        room__in=rooms,
        status__in=BUSY_STEP_STATES,
        scheduled_start__lt=end,
        scheduled_end__gt=start,
    )


def free_intervals(open_intervals: list[Interval], busy: list[Interval]) -> list[Interval]:
    """The parts of OPEN_INTERVALS that no BUSY interval covers."""
    free: list[Interval] = []
    for opens, closes in open_intervals:
        cursor = opens
        for start, end in sorted(busy):
            if end <= cursor or start >= closes:
                continue
            if start > cursor:
                free.append((cursor, start))
            cursor = max(cursor, end)
        if cursor < closes:
            free.append((cursor, closes))
    return free


def slots_in(free: list[Interval], minutes: int) -> list[Interval]:
    """Consecutive slots of MINUTES that fit in the FREE intervals."""
    length = dt.timedelta(minutes=minutes)
    slots: list[Interval] = []
    for start, end in free:
        while start + length <= end:
            slots.append((start, start + length))
            start += length
    return slots


@dataclass
class CalendarColumn:
    """One room on one day: its hours, its bookings (overlaps flagged) and its free time."""

    room: Room
    day: dt.date
    open_intervals: list[Interval]
    bookings: list[ScheduledProcedureStep]
    free: list[Interval]  # slots of the wanted length, or whole free intervals

    @property
    def entries(self) -> list[tuple[dt.datetime, str, Any]]:
        """Bookings and free time in time order, as (start, "booking" or "free", item)."""
        rows: list[tuple[dt.datetime, str, Any]] = [
            (step.scheduled_start, "booking", step) for step in self.bookings
        ]
        rows += [(start, "free", (start, end)) for start, end in self.free]
        return sorted(rows, key=lambda row: (row[0], row[1] == "free"))


def calendar_columns(
    rooms: list[Room], days: list[dt.date], *, slot_minutes: int | None = None
) -> list[CalendarColumn]:
    """Columns for every day of DAYS and room of ROOMS; free time cut in SLOT_MINUTES if given."""
    if not rooms or not days:
        return []
    hours = room_hours(rooms)
    first, _ = _day_bounds(min(days))
    _, last = _day_bounds(max(days))
    steps = list(
        busy_steps(rooms, first, last)
        .select_related(
            "requested_procedure__procedure_type",
            "requested_procedure__order__patient",
        )
        .order_by("scheduled_start", "id")
    )
    columns = []
    for day in days:
        day_start, day_end = _day_bounds(day)
        for room in rooms:
            bookings = [
                step
                for step in steps
                if step.room_id == room.pk
                and step.scheduled_start < day_end
                and step.scheduled_end > day_start
            ]
            for step in bookings:
                step.overlaps = any(  # type: ignore[attr-defined]
                    other is not step
                    and other.scheduled_start < step.scheduled_end
                    and other.scheduled_end > step.scheduled_start
                    for other in bookings
                )
            intervals = opening_intervals(hours[room.pk], day)
            free = free_intervals(
                intervals, [(step.scheduled_start, step.scheduled_end) for step in bookings]
            )
            if slot_minutes:
                free = slots_in(free, slot_minutes)
            columns.append(CalendarColumn(room, day, intervals, bookings, free))
    return columns


def free_slots(room: Room, day: dt.date, minutes: int) -> list[Interval]:
    """The free slots of MINUTES in ROOM on DAY, within its opening hours."""
    return calendar_columns([room], [day], slot_minutes=minutes)[0].free


def orders_awaiting_slot(modalities: list[str]) -> QuerySet[Order]:
    """Orders not started yet with an open step of MODALITIES that has no room."""
    return (
        Order.objects.filter(
            status__in=(Order.Status.SCHEDULED, Order.Status.ARRIVED),
            requested_procedures__steps__modality__in=modalities,
            requested_procedures__steps__room__isnull=True,
            requested_procedures__steps__status__in=WAITING_STEP_STATES,
        )
        .select_related("patient")
        .distinct()
        .annotate(urgency=PRIORITY_RANK)
        .order_by("urgency", "ordered_at")
    )
