"""The Modality Worklist query (PS3.4 K.6.1): ris's open scheduled steps as MWL identifiers.

One SQL statement narrows the steps with the keys a modality sends (station, date,
modality, patient ...); each candidate is then checked with the exact C-FIND rules of
worklist.matching and answered with the keys the query asked for (PS3.4 C.2.2.1).
Times are stored in UTC and shown in the department's time zone (settings.TIME_ZONE), or
in the one the query names with Timezone Offset From UTC.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db.models import (
    BooleanField,
    CharField,
    F,
    Func,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
)
from django.db.models.functions import Concat, Upper
from django.utils import timezone
from pydicom.charset import python_encoding
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

from core.dicom_elements import trusted_element
from ris.models import PatientIdentifier, Priority, ScheduledProcedureStep
from worklist import matching
from worklist.matching import InvalidMatchingKey

# Only steps still to be done are on the worklist; cancelled ones never are.
WORKLIST_STEP_STATES = (
    ScheduledProcedureStep.Status.SCHEDULED,
    ScheduledProcedureStep.Status.ARRIVED,
)
# Scheduled Procedure Step Status (0040,0020), PS3.3 C.4.10: the RIS state it stands for.
SPS_STATUS = {
    ScheduledProcedureStep.Status.SCHEDULED: "SCHEDULED",
    ScheduledProcedureStep.Status.ARRIVED: "ARRIVED",
}
# Requested Procedure Priority (0040,1003), PS3.3 C.4.11: STAT, HIGH, ROUTINE, MEDIUM, LOW.
REQUESTED_PROCEDURE_PRIORITY = {
    Priority.ROUTINE: "ROUTINE",
    Priority.URGENT: "HIGH",
    Priority.STAT: "STAT",
}
# The department's own procedure codes: a private coding scheme (PS3.16 8.2: "99" prefix).
LOCAL_CODING_SCHEME = "99RISPACS"

SPECIFIC_CHARACTER_SET = Tag(0x0008, 0x0005)
TIMEZONE_OFFSET_FROM_UTC = Tag(0x0008, 0x0201)
SCHEDULED_PROCEDURE_STEP_SEQUENCE = Tag(0x0040, 0x0100)
SPS_START_DATE = Tag(0x0040, 0x0002)
SPS_START_TIME = Tag(0x0040, 0x0003)
# Specific Character Set terms a reply may be written in when the query used them:
# the single-byte ones without code extensions, and the Unicode ones (PS3.3 C.12.1.1.2).
_REPLY_CHARACTER_SETS = frozenset(
    {
        "ISO_IR 100",
        "ISO_IR 101",
        "ISO_IR 109",
        "ISO_IR 110",
        "ISO_IR 126",
        "ISO_IR 127",
        "ISO_IR 138",
        "ISO_IR 144",
        "ISO_IR 148",
        "ISO_IR 166",
        "ISO_IR 203",
        "ISO_IR 192",
        "GB18030",
        "GBK",
    }
)
UNICODE = "ISO_IR 192"
_RP = "requested_procedure__"
_ORDER = f"{_RP}order__"
_PATIENT = f"{_ORDER}patient__"
Row = dict[str, Any]
Source = Callable[[Row], Any]
_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})


class InvalidQuery(ValueError):
    """The identifier cannot be answered; names the offending element (PS3.4 K.4.1.1.4)."""

    def __init__(self, tag: int, message: str) -> None:
        super().__init__(message)
        self.tag = Tag(tag)


def _element(ds: Dataset, keyword: str) -> DataElement | None:
    element: DataElement | None = ds.get(Tag(keyword))
    return element


def _values(element: DataElement) -> list[str]:
    """Return a key's values as strings: several for a list (backslash-separated)."""
    value = element.value
    if value is None:
        return []
    if isinstance(value, MultiValue | list):
        return [str(item).strip() for item in value]
    return [str(value).strip()]


def _key(element: DataElement | None) -> list[str]:
    """Return the non-universal values of ELEMENT, or [] when it matches everything."""
    if element is None:
        return []
    values = _values(element)
    return [] if any(matching.is_universal(value) for value in values) or not values else values


def _single(element: DataElement | None) -> str:
    values = _key(element)
    return values[0] if len(values) == 1 else "\\".join(values)


class _Like(Func):
    """LHS LIKE PATTERN with '!' as the escape character, on SQLite and PostgreSQL alike."""

    arg_joiner = " LIKE "
    template = f"%(expressions)s ESCAPE '{matching.LIKE_ESCAPE}'"
    output_field = BooleanField()


def _string_filter(column: Any, key: list[str], *, ignore_case: bool = False) -> Q:
    """Narrow on a string key: exact values in SQL, wildcards and PN as a LIKE superset."""
    condition = Q()
    for value in key:
        if ignore_case or matching.has_wildcards(value):
            expression = column if not isinstance(column, str) else F(column)
            condition |= Q(_Like(Upper(expression), Value(matching.like_pattern(value))))
        else:
            condition |= Q(**{column: value})
    return condition


def _person_name_sql(prefix: str) -> Func:
    """Family^Given^Middle^Prefix^Suffix without trailing empty components (PS3.5 6.2.1)."""
    parts: list[Any] = []
    for name in ("family_name", "given_name", "middle_name", "name_prefix", "name_suffix"):
        if parts:
            parts.append(Value("^"))
        parts.append(F(f"{prefix}{name}"))
    return Func(Concat(*parts), Value("^"), function="RTRIM", output_field=CharField())


def _person_name_key(element: DataElement | None) -> list[str]:
    return [matching.person_name_group(value) for value in _key(element)]


@dataclass(frozen=True)
class _Key:
    """One key of the query: where the RIS has its value, and what it must match."""

    tag: BaseTag
    vr: str
    source: Source
    values: list[str]  # non-universal values to match; [] matches everything
    item: Dataset | None = None  # for a sequence: the item of keys asked (None: all)

    @property
    def matches_something(self) -> bool:
        return bool(self.values) or (self.item is not None and _has_keys(self.item))


@dataclass
class WorklistQuery:
    """A parsed MWL identifier: its keys, its time zone and its date-time range."""

    identifier: Dataset
    zone: dt.tzinfo
    sps_item: Dataset | None
    top: list[_Key] = field(default_factory=list)
    sps: list[_Key] | None = None  # None: the Scheduled Procedure Step Sequence not asked
    sps_window: matching.Range | None = None
    sps_times: tuple[dt.time | None, dt.time | None] | None = None
    # Keys the RIS holds no value for: returned empty, with the FF01 warning (PS3.4 K.4.1.1.4).
    unsupported: list[BaseTag] = field(default_factory=list)
    character_set: list[str] = field(default_factory=list)


def _zone(identifier: Dataset) -> dt.tzinfo:
    element = identifier.get(TIMEZONE_OFFSET_FROM_UTC)
    if element is not None and _single(element):
        try:
            return matching.parse_utc_offset(_single(element))
        except InvalidMatchingKey as exc:
            raise InvalidQuery(TIMEZONE_OFFSET_FROM_UTC, f"TimezoneOffsetFromUTC: {exc}") from exc
    return zoneinfo.ZoneInfo(settings.TIME_ZONE)


def parse_query(identifier: Dataset) -> WorklistQuery:
    """Check IDENTIFIER's structure and date/time keys; raise InvalidQuery naming the element."""
    zone = _zone(identifier)
    sps_item: Dataset | None = None
    if SCHEDULED_PROCEDURE_STEP_SEQUENCE in identifier:
        items = identifier[SCHEDULED_PROCEDURE_STEP_SEQUENCE].value or []
        if len(items) > 1:
            # PS3.4 C.2.2.2.6: a sequence matching key holds one item.
            raise InvalidQuery(
                SCHEDULED_PROCEDURE_STEP_SEQUENCE,
                "Scheduled Procedure Step Sequence must hold at most one item",
            )
        sps_item = items[0] if items else None
    _check_dates_and_times(identifier)
    query = WorklistQuery(identifier=identifier, zone=zone, sps_item=sps_item)
    query.top = _plan(identifier, TOP_ATTRIBUTES, query.unsupported)
    if SCHEDULED_PROCEDURE_STEP_SEQUENCE in identifier:
        query.sps = (
            _plan(sps_item, SPS_ATTRIBUTES, query.unsupported)
            if sps_item is not None
            else [_Key(tag, vr, source, []) for tag, (vr, source) in SPS_ATTRIBUTES.items()]
        )
    if SPECIFIC_CHARACTER_SET in identifier:
        query.character_set = _values(identifier[SPECIFIC_CHARACTER_SET])
    if sps_item is not None:
        date_key = _single(sps_item.get(SPS_START_DATE))
        time_key = _single(sps_item.get(SPS_START_TIME))
        try:
            query.sps_window = matching.datetime_range(date_key, "", zone)
        except InvalidMatchingKey as exc:
            raise InvalidQuery(SPS_START_DATE, f"ScheduledProcedureStepStartDate: {exc}") from exc
        try:
            if query.sps_window is not None:
                query.sps_window = matching.datetime_range(date_key, time_key, zone)
            else:
                query.sps_times = matching.time_of_day_range(time_key)
        except InvalidMatchingKey as exc:
            raise InvalidQuery(SPS_START_TIME, f"ScheduledProcedureStepStartTime: {exc}") from exc
    return query


def _check_dates_and_times(keys: Dataset) -> None:
    """Refuse DA and TM keys that are neither a value nor a range (PS3.4 C.2.2.2.5)."""
    for element in keys:
        if element.VR == "SQ":
            for item in element.value or []:
                _check_dates_and_times(item)
        elif element.VR in ("DA", "TM"):
            parse = matching.date_bounds if element.VR == "DA" else matching.time_bounds
            for value in _key(element):
                try:
                    parse(value)
                except InvalidMatchingKey as exc:
                    name = keyword_for_tag(element.tag) or str(element.tag)
                    raise InvalidQuery(element.tag, f"{name}: {exc}") from exc


def _narrow(query: WorklistQuery) -> QuerySet[ScheduledProcedureStep]:
    """Return the steps that may match: a superset, in one SQL statement."""
    identifier, item = query.identifier, query.sps_item
    steps = ScheduledProcedureStep.objects.filter(status__in=WORKLIST_STEP_STATES)
    order = "requested_procedure__order__"
    patient = f"{order}patient__"
    top: list[tuple[str, Any, bool]] = [
        ("AccessionNumber", f"{order}accession_number", False),
        ("RequestedProcedureID", "requested_procedure__requested_procedure_id", False),
        ("StudyInstanceUID", "requested_procedure__study_instance_uid", False),
        ("ReferringPhysicianName", f"{order}referring_physician_name", True),
    ]
    for keyword, column, ignore_case in top:
        element = _element(identifier, keyword)
        key = _person_name_key(element) if ignore_case else _key(element)
        if key:
            steps = steps.filter(_string_filter(column, key, ignore_case=ignore_case))
    name_key = _person_name_key(_element(identifier, "PatientName"))
    if name_key:
        steps = steps.annotate(pn=_person_name_sql(patient)).filter(
            _string_filter(F("pn"), name_key, ignore_case=True)
        )
    steps = _narrow_patient_id(steps, identifier)
    if item is not None:
        sps_keys: list[tuple[str, str, bool]] = [
            ("ScheduledStationAETitle", "station_ae_title", False),
            ("Modality", "modality", False),
            ("ScheduledProcedureStepID", "sps_id", False),
            ("ScheduledStationName", "station_name", False),
            ("ScheduledPerformingPhysicianName", "performing_physician_name", True),
        ]
        for keyword, column, ignore_case in sps_keys:
            key = (
                _person_name_key(_element(item, keyword))
                if ignore_case
                else _key(_element(item, keyword))
            )
            if key:
                steps = steps.filter(_string_filter(column, key, ignore_case=ignore_case))
        window = query.sps_window
        if window is not None and window.start is not None:
            steps = steps.filter(scheduled_start__gte=window.start)
        if window is not None and window.end is not None:
            steps = steps.filter(scheduled_start__lte=window.end)
        if query.sps_times is not None:
            first, last = query.sps_times
            # Evaluated under timezone.override(query.zone): the local time of day.
            if first is not None:
                steps = steps.filter(scheduled_start__time__gte=first)
            if last is not None:
                steps = steps.filter(scheduled_start__time__lte=last)
    return steps


def _narrow_patient_id(
    steps: QuerySet[ScheduledProcedureStep], identifier: Dataset
) -> QuerySet[ScheduledProcedureStep]:
    """Annotate the identifier shown as Patient ID: the one matching the keys, else the first."""
    ids = PatientIdentifier.objects.filter(
        patient=OuterRef("requested_procedure__order__patient"), is_alias=False
    )
    id_key = _key(_element(identifier, "PatientID"))
    issuer_key = _key(_element(identifier, "IssuerOfPatientID"))
    if id_key:
        ids = ids.filter(_string_filter("value", id_key))
    if issuer_key:
        ids = ids.filter(_string_filter("issuer__namespace_id", issuer_key))
    ids = ids.order_by("issuer__namespace_id", "value")
    steps = steps.annotate(
        patient_id=Subquery(ids.values("value")[:1]),
        issuer_of_patient_id=Subquery(ids.values("issuer__namespace_id")[:1]),
    )
    if id_key or issuer_key:
        steps = steps.filter(patient_id__isnull=False)
    return steps


_ROW_FIELDS = (
    "pk",
    "sps_id",
    "modality",
    "station_ae_title",
    "station_name",
    "scheduled_start",
    "scheduled_end",
    "performing_physician_name",
    "description",
    "status",
    "room__location",
    "requested_procedure__requested_procedure_id",
    "requested_procedure__description",
    "requested_procedure__study_instance_uid",
    "requested_procedure__procedure_type__code",
    "requested_procedure__procedure_type__name",
    "requested_procedure__order__accession_number",
    "requested_procedure__order__placer_order_number",
    "requested_procedure__order__filler_order_number",
    "requested_procedure__order__referring_physician_name",
    "requested_procedure__order__priority",
    "requested_procedure__order__reason",
    "requested_procedure__order__patient__family_name",
    "requested_procedure__order__patient__given_name",
    "requested_procedure__order__patient__middle_name",
    "requested_procedure__order__patient__name_prefix",
    "requested_procedure__order__patient__name_suffix",
    "requested_procedure__order__patient__birth_date",
    "requested_procedure__order__patient__sex",
    "patient_id",
    "issuer_of_patient_id",
)


def _code_items(row: Row) -> list[Dataset]:
    """The procedure as a code (Requested Procedure and Scheduled Protocol Code Sequences)."""
    item = Dataset()
    item.add(trusted_element(0x00080100, "SH", row[f"{_RP}procedure_type__code"]))  # CodeValue
    item.add(trusted_element(0x00080102, "SH", LOCAL_CODING_SCHEME))  # CodingSchemeDesignator
    item.add(
        trusted_element(0x00080104, "LO", row[f"{_RP}procedure_type__name"][:64])
    )  # CodeMeaning
    return [item]


def _nothing(row: Row) -> None:
    return None


def _empty(row: Row) -> str:
    return ""


def _none(row: Row) -> list[Dataset]:
    return []


# What the RIS knows of a worklist entry (PS3.4 Table K.6-1): each attribute's VR and
# where its value comes from. A row's "start" and "end" are in the query's time zone.
SPS_ATTRIBUTES: dict[BaseTag, tuple[str, Source]] = {
    Tag("ScheduledStationAETitle"): ("AE", lambda row: row["station_ae_title"]),
    SPS_START_DATE: ("DA", lambda row: row["start"].strftime("%Y%m%d")),
    SPS_START_TIME: ("TM", lambda row: row["start"].strftime("%H%M%S")),
    Tag("ScheduledProcedureStepEndDate"): ("DA", lambda row: row["end"].strftime("%Y%m%d")),
    Tag("ScheduledProcedureStepEndTime"): ("TM", lambda row: row["end"].strftime("%H%M%S")),
    Tag("Modality"): ("CS", lambda row: row["modality"]),
    Tag("ScheduledPerformingPhysicianName"): ("PN", lambda row: row["performing_physician_name"]),
    Tag("ScheduledProcedureStepDescription"): ("LO", lambda row: row["description"]),
    Tag("ScheduledProtocolCodeSequence"): ("SQ", _code_items),
    Tag("ScheduledStationName"): ("SH", lambda row: row["station_name"]),
    Tag("ScheduledProcedureStepLocation"): ("SH", lambda row: (row["room__location"] or "")[:16]),
    Tag("PreMedication"): ("LO", _empty),
    Tag("ScheduledProcedureStepID"): ("SH", lambda row: row["sps_id"]),
    Tag("RequestedContrastAgent"): ("LO", _empty),
    Tag("ScheduledProcedureStepStatus"): ("CS", lambda row: SPS_STATUS.get(row["status"], "")),
    Tag("CommentsOnTheScheduledProcedureStep"): ("LT", _empty),
}
TOP_ATTRIBUTES: dict[BaseTag, tuple[str, Source]] = {
    TIMEZONE_OFFSET_FROM_UTC: ("SH", lambda row: matching.format_utc_offset(row["start"])),
    Tag("AccessionNumber"): ("SH", lambda row: row[f"{_ORDER}accession_number"]),
    Tag("ReferringPhysicianName"): ("PN", lambda row: row[f"{_ORDER}referring_physician_name"]),
    Tag("ReferencedStudySequence"): ("SQ", _none),
    Tag("ReferencedPatientSequence"): ("SQ", _none),
    Tag("PatientName"): ("PN", lambda row: row["patient_name"]),
    Tag("PatientID"): ("LO", lambda row: row["patient_id"] or ""),
    Tag("IssuerOfPatientID"): ("LO", lambda row: row["issuer_of_patient_id"] or ""),
    Tag("PatientBirthDate"): (
        "DA",
        lambda row: (
            row[f"{_PATIENT}birth_date"].strftime("%Y%m%d") if row[f"{_PATIENT}birth_date"] else ""
        ),
    ),
    Tag("PatientSex"): ("CS", lambda row: row[f"{_PATIENT}sex"] or ""),
    Tag("PatientWeight"): ("DS", _nothing),
    Tag("MedicalAlerts"): ("LO", _empty),
    Tag("Allergies"): ("LO", _empty),
    Tag("PregnancyStatus"): ("US", _nothing),
    Tag("AdmissionID"): ("LO", _empty),
    Tag("CurrentPatientLocation"): ("LO", _empty),
    Tag("StudyInstanceUID"): ("UI", lambda row: row[f"{_RP}study_instance_uid"]),
    Tag("RequestingPhysician"): ("PN", _empty),
    Tag("RequestedProcedureDescription"): ("LO", lambda row: row[f"{_RP}description"]),
    Tag("RequestedProcedureCodeSequence"): ("SQ", _code_items),
    Tag("RequestedProcedureID"): ("SH", lambda row: row[f"{_RP}requested_procedure_id"]),
    Tag("ReasonForTheRequestedProcedure"): ("LO", lambda row: (row[f"{_ORDER}reason"] or "")[:64]),
    Tag("RequestedProcedurePriority"): (
        "SH",
        lambda row: REQUESTED_PROCEDURE_PRIORITY.get(row[f"{_ORDER}priority"], ""),
    ),
    Tag("PatientTransportArrangements"): ("LO", _empty),
    Tag("PlacerOrderNumberImagingServiceRequest"): (
        "LO",
        lambda row: row[f"{_ORDER}placer_order_number"],
    ),
    Tag("FillerOrderNumberImagingServiceRequest"): (
        "LO",
        lambda row: row[f"{_ORDER}filler_order_number"],
    ),
}


def _is_skipped(tag: int) -> bool:
    # Group lengths, command and file meta groups, private attributes: never keys.
    tag = Tag(tag)
    return tag.element == 0 or tag.group in (0x0000, 0x0002) or tag.is_private


def _plan(
    keys: Dataset, attributes: dict[BaseTag, tuple[str, Source]], unsupported: list[BaseTag]
) -> list[_Key]:
    """Turn the keys of KEYS into what to match and return, from ATTRIBUTES."""
    plan = []
    for element in keys:
        tag = element.tag
        if _is_skipped(tag) or tag in (SPECIFIC_CHARACTER_SET, SCHEDULED_PROCEDURE_STEP_SEQUENCE):
            continue
        if tag not in attributes:
            unsupported.append(tag)
            plan.append(_Key(tag, element.VR, _nothing if element.VR != "SQ" else _none, []))
            continue
        vr, source = attributes[tag]
        if vr == "SQ":
            plan.append(_Key(tag, vr, source, [], element.value[0] if element.value else None))
            continue
        values = _key(element)
        if vr == "PN":
            values = [matching.person_name_group(value) for value in values]
        if tag in (SPS_START_DATE, SPS_START_TIME) and attributes is SPS_ATTRIBUTES:
            values = []  # matched together, as one date-time range
        elif vr in ("TM", "DT") and values:
            unsupported.append(tag)  # only the step's start time is matched, with its date
            values = []
        plan.append(_Key(tag, vr, source, values))
    return plan


def _has_keys(item: Dataset) -> bool:
    return any(
        bool(element.value) if element.VR == "SQ" else bool(_key(element)) for element in item
    )


def _match_values(vr: str, values: list[str], actual: Any) -> bool:
    text = "" if actual is None else str(actual)
    if vr == "DA":
        day = matching.parse_date(text) if text else None
        return any(matching.match_date(value, day) for value in values)
    return matching.match_string(values, text, ignore_case=vr == "PN")


def _item_matches(item: Dataset, keys: Dataset) -> bool:
    """Sequence matching inside a code item (PS3.4 C.2.2.2.6): every key with a value."""
    for element in keys:
        values = _key(element) if element.VR != "SQ" else []
        if values and not (
            element.tag in item and _match_values(element.VR, values, item[element.tag].value)
        ):
            return False
    return True


def _row_matches(row: Row, plan: list[_Key]) -> bool:
    for key in plan:
        if not key.matches_something:
            continue
        value = key.source(row)
        if key.vr == "SQ":
            assert key.item is not None
            if not any(_item_matches(item, key.item) for item in value):
                return False
        elif not _match_values(key.vr, key.values, value):
            return False
    return True


def _sps_time_matches(query: WorklistQuery, start: dt.datetime) -> bool:
    """Match the step's START (in the query's zone) against the start date and time keys."""
    if query.sps_window is not None:
        return query.sps_window.contains(start)
    if query.sps_times is not None:
        first, last = query.sps_times
        moment = start.time()
        return (first is None or moment >= first) and (last is None or moment <= last)
    return True


def _project(item: Dataset, keys: Dataset) -> Dataset:
    """The attributes of a code ITEM that KEYS ask for; the others not at all (C.2.2.1)."""
    reply = Dataset()
    for element in keys:
        if element.tag in item:
            reply.add(item[element.tag])
        elif not _is_skipped(element.tag):
            reply.add(trusted_element(element.tag, element.VR, None))
    return reply


def _build(row: Row, plan: list[_Key]) -> Dataset:
    ds = Dataset()
    elements = ds._dict  # the plan's tags are public and unique: Dataset.add's checks pass
    for key in plan:
        value = key.source(row)
        if key.vr == "SQ":
            if key.item is not None:
                value = [_project(item, key.item) for item in value]
            ds.add(trusted_element(key.tag, key.vr, value))  # a sequence knows its parent dataset
        else:
            elements[key.tag] = trusted_element(key.tag, key.vr, value)
    return ds


def _texts(ds: Dataset) -> Iterator[str]:
    elements: Iterator[DataElement] = iter(ds._dict.values())  # type: ignore[arg-type]
    for element in elements:  # our own elements, none raw; order does not matter
        if element.VR == "SQ":
            for item in element.value or []:
                yield from _texts(item)
        elif element.VR in _TEXT_VRS and element.value is not None:
            yield str(element.value)


def reply_character_set(reply: Dataset, query_character_set: list[str]) -> str | None:
    """Return the Specific Character Set for REPLY: None for ASCII, else the query's if it
    can carry the text, else ISO_IR 192 (UTF-8)."""
    texts = list(_texts(reply))
    if all(text.isascii() for text in texts):
        return None
    if len(query_character_set) == 1 and query_character_set[0] in _REPLY_CHARACTER_SETS:
        term = query_character_set[0]
        try:
            for text in texts:
                text.encode(python_encoding[term])
        except (UnicodeEncodeError, KeyError):
            pass
        else:
            return term
    return UNICODE


def _prepare(row: Row, zone: dt.tzinfo) -> Row:
    """Add what several attributes use: local times, the patient's name as a PN."""
    row["start"] = timezone.localtime(row["scheduled_start"], zone)
    row["end"] = timezone.localtime(row["scheduled_end"], zone)
    row["patient_name"] = "^".join(
        row[f"{_PATIENT}{part}"] or ""
        for part in ("family_name", "given_name", "middle_name", "name_prefix", "name_suffix")
    ).rstrip("^")
    return row


@dataclass
class WorklistMatches:
    """The answer to one MWL query: iterate for the reply identifiers, built as they go."""

    query: WorklistQuery
    rows: list[Row]
    count: int = 0

    @property
    def unsupported(self) -> list[BaseTag]:
        return self.query.unsupported

    def __iter__(self) -> Iterator[Dataset]:
        query = self.query
        for row in self.rows:
            row = _prepare(row, query.zone)
            if not _sps_time_matches(query, row["start"]) or not _row_matches(row, query.top):
                continue
            if query.sps is not None and not _row_matches(row, query.sps):
                continue
            reply = _build(row, query.top)
            if query.sps is not None:
                reply.add(
                    trusted_element(
                        SCHEDULED_PROCEDURE_STEP_SEQUENCE, "SQ", [_build(row, query.sps)]
                    )
                )
            term = reply_character_set(reply, query.character_set)
            if term is not None:
                reply.add(trusted_element(SPECIFIC_CHARACTER_SET, "CS", term))
            self.count += 1
            yield reply


def find_worklist_items(identifier: Dataset) -> WorklistMatches:
    """Run the MWL query IDENTIFIER: fetch the candidates now, build the replies when iterated."""
    query = parse_query(identifier)
    steps = _narrow(query).order_by("scheduled_start", "pk").values(*_ROW_FIELDS)
    with timezone.override(query.zone):
        rows = list(steps)
    return WorklistMatches(query=query, rows=rows)
