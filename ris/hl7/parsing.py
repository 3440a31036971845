"""HL7 v2 segments to plain data: PID, PV1, MRG, ORC, OBR, TQ1, IPC (v2.3 to v2.5.1).

No Django here. Every value that cannot be used raises FieldError naming the segment,
the field and the reason, which the ACK carries back in its ERR segment. Code tables
and segment definitions come from hl7apy's v2.5.1 library (a superset of the older ones).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import cache
from zoneinfo import ZoneInfo

import hl7apy
from hl7apy.utils import get_datetime_info

from ris.hl7 import ack
from ris.hl7.er7 import NULL, Message, Segment, pick

# The versions this interface reads (MSH-12).
SUPPORTED_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1")

# HL7 table 0027 priority -> ris.models.Priority values.
PRIORITIES = {
    "S": "stat",
    "A": "urgent",
    "T": "urgent",
    "R": "routine",
    "P": "routine",
    "C": "routine",
}
# HL7 table 0203 identifier types kept as they are; the rest of table 0203 counts as PI.
IDENTIFIER_TYPES = ("MR", "NI", "PI", "PPN", "SS")
# Identifier types that name a visit or an account, not a person: not patient identifiers.
NOT_PATIENT_IDENTIFIERS = ("AN", "VN", "AM", "ANON")

# HL7 table 0211 -> Python codec.
CHARACTER_SETS = {
    "": "",
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE": "utf-8",
    "UNICODE UTF-8": "utf-8",
    "UNICODE UTF-16": "utf-16",
    "UNICODE UTF-32": "utf-32",
    "GB 18030-2000": "gb18030",
    "BIG-5": "big5",
    "KS X 1001": "euc-kr",
    "ISO IR87": "iso2022_jp",
}


class FieldError(ValueError):
    """A value in the message that cannot be used; the ACK names where and why."""

    def __init__(
        self,
        location: ack.ErrorLocation,
        reason: str,
        code: str = ack.DATA_TYPE_ERROR,
    ) -> None:
        super().__init__(f"{location}: {reason}")
        self.location = location
        self.reason = reason
        self.code = code

    @property
    def text(self) -> str:
        return f"{self.location}: {self.reason}"


def error_at(
    segment: Segment, number: int, reason: str, code: str = ack.DATA_TYPE_ERROR, component: int = 0
) -> FieldError:
    return FieldError(
        ack.ErrorLocation(segment.id, segment.sequence, number, component), reason, code
    )


def missing(segment_id: str, reason: str = "") -> FieldError:
    return FieldError(
        ack.ErrorLocation(segment_id),
        reason or f"required segment {segment_id} is missing",
        ack.SEGMENT_SEQUENCE_ERROR,
    )


@cache
def code_table(number: str) -> frozenset[str]:
    """Return the codes of HL7 table NUMBER (e.g. "0001") as hl7apy's v2.5.1 library has them."""
    entry = hl7apy.load_library("2.5.1").TABLES.get(f"HL7{number}")
    return frozenset(entry[1]) if entry else frozenset()


@cache
def known_segment_ids() -> frozenset[str]:
    """Return every segment ID defined by some HL7 version from 2.3 to 2.5.1."""
    ids: set[str] = set()
    for version in SUPPORTED_VERSIONS:
        ids.update(hl7apy.load_library(version).SEGMENTS)
    return frozenset(ids)


def check_segments(message: Message) -> None:
    """Refuse a segment that no HL7 version defines; Z segments are local and allowed."""
    known = known_segment_ids()
    for segment in message.segments:
        if segment.id not in known and not segment.id.startswith("Z"):
            raise FieldError(
                ack.ErrorLocation(segment.id, segment.sequence),
                f"{segment.id} is not an HL7 segment",
                ack.SEGMENT_SEQUENCE_ERROR,
            )


# ---------------------------------------------------------------- values


def parse_timestamp(
    segment: Segment, number: int, tz: dt.tzinfo, *, component: int = 1, raw: str | None = None
) -> dt.datetime | None:
    """Read a TS/DTM (YYYY[MM[DD[HH[MM[SS[.S+]]]]]][+/-ZZZZ]) as an aware datetime.

    Without an offset the time is local to TZ, the department's time zone.
    """
    value = raw if raw is not None else segment.value(number, component)
    if not value or value == NULL:
        return None
    try:
        moment, _format, offset, _precision = get_datetime_info(value)
    except ValueError as exc:
        raise error_at(
            segment,
            number,
            f"{value!r} is not an HL7 date/time",
            component=component if component > 1 else 0,
        ) from exc
    if offset:
        sign = -1 if offset[0] == "-" else 1
        delta = dt.timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
        return moment.replace(tzinfo=dt.timezone(sign * delta))
    return moment.replace(tzinfo=tz)


def parse_date(segment: Segment, number: int) -> dt.date | None:
    """Read a DT or the date part of a TS (a birth date has no time zone)."""
    value = segment.value(number)
    if not value or value == NULL:
        return None
    digits = value[:8]
    try:
        moment, _format, _offset, _precision = get_datetime_info(value)
        if len(digits) < 8:
            raise ValueError("a date needs year, month and day")
    except ValueError as exc:
        raise error_at(segment, number, f"{value!r} is not a date (YYYYMMDD)") from exc
    date = moment.date()
    if date.year < 1850:
        raise error_at(segment, number, f"{value!r} is not a plausible date")
    return date


# ---------------------------------------------------------------- PID, MRG


@dataclass(frozen=True)
class Identifier:
    """One patient identifier (CX) with its assigning authority (CX.4)."""

    value: str
    issuer: str
    type: str = "MR"


@dataclass
class PatientData:
    """What PID says about the patient. None: not sent, leave as it is; "": clear it."""

    identifiers: list[Identifier]
    family_name: str | None = None
    given_name: str | None = None
    middle_name: str | None = None
    name_suffix: str | None = None
    name_prefix: str | None = None
    birth_date: dt.date | None = None
    birth_date_sent: bool = False
    sex: str | None = None
    address: str | None = None
    phone: str | None = None
    email: str | None = None

    def changes(self) -> dict[str, object]:
        """Return the demographic fields PID sent, by ris.models.Patient field name."""
        names = (
            "family_name",
            "given_name",
            "middle_name",
            "name_suffix",
            "name_prefix",
            "sex",
            "address",
            "phone",
            "email",
        )
        changes: dict[str, object] = {
            name: getattr(self, name) for name in names if getattr(self, name) is not None
        }
        if self.birth_date_sent:
            changes["birth_date"] = self.birth_date
        return changes


def parse_identifiers(
    segment: Segment, number: int, default_issuer: str, *, required: bool = True
) -> list[Identifier]:
    """Read every repetition of a CX list (PID-3, MRG-1), each with its assigning authority."""
    identifiers: list[Identifier] = []
    for index, raw in enumerate(segment.repetitions(number)):
        value = pick(raw, segment.delimiters, 1).strip()
        if not value or value == NULL:
            continue
        type_code = pick(raw, segment.delimiters, 5).strip().upper()
        if type_code in NOT_PATIENT_IDENTIFIERS:
            continue
        issuer = (
            pick(raw, segment.delimiters, 4, 1).strip()
            or pick(raw, segment.delimiters, 4, 2).strip()
            or default_issuer
        )
        if not issuer:
            raise error_at(
                segment,
                number,
                f"repetition {index + 1} ({value}) has no assigning authority",
                ack.REQUIRED_FIELD_MISSING,
                component=4,
            )
        if len(value) > 64:
            raise error_at(segment, number, f"identifier {value[:20]}... is over 64 characters")
        if len(issuer) > 64:
            raise error_at(
                segment, number, "assigning authority is over 64 characters", component=4
            )
        if type_code and type_code not in code_table("0203"):
            raise error_at(
                segment,
                number,
                f"identifier type {type_code!r} is not in HL7 table 0203",
                ack.TABLE_VALUE_NOT_FOUND,
                component=5,
            )
        kind = type_code if type_code in IDENTIFIER_TYPES else ("PI" if type_code else "MR")
        identifier = Identifier(value=value, issuer=issuer, type=kind)
        if identifier not in identifiers:
            identifiers.append(identifier)
    if required and not identifiers:
        raise error_at(
            segment, number, "no patient identifier with a value", ack.REQUIRED_FIELD_MISSING
        )
    return identifiers


def _text(segment: Segment, number: int, component: int, rep: int, limit: int) -> str | None:
    value = segment.value(number, component, rep=rep)
    if value == NULL:
        return ""
    if not value:
        return None
    if len(value) > limit:
        raise error_at(
            segment, number, f"{value[:20]}... is over {limit} characters", component=component
        )
    return value.strip()


def parse_patient(pid: Segment, default_issuer: str) -> PatientData:
    """Read PID: identifiers (PID-3), name (PID-5), birth date (7), sex (8), address, phone."""
    data = PatientData(identifiers=parse_identifiers(pid, 3, default_issuer))
    names = pid.repetitions(5)
    if names:
        # The legal name (XPN.7 = L) when several are sent, else the first.
        rep = next(
            (i for i, raw in enumerate(names) if pick(raw, pid.delimiters, 7) == "L"),
            0,
        )
        if names[rep] == NULL:
            raise error_at(pid, 5, "the patient name cannot be cleared")
        data.family_name = _text(pid, 5, 1, rep, 64)
        data.given_name = _text(pid, 5, 2, rep, 64)
        data.middle_name = _text(pid, 5, 3, rep, 64)
        data.name_suffix = _text(pid, 5, 4, rep, 16)
        data.name_prefix = _text(pid, 5, 5, rep, 16)
        if not data.family_name:
            raise error_at(pid, 5, "family name is empty", ack.REQUIRED_FIELD_MISSING, 1)
    if pid.raw(7):
        data.birth_date_sent = True
        data.birth_date = parse_date(pid, 7)
    sex = pid.value(8).strip().upper()
    if sex == NULL:
        data.sex = "U"
    elif sex:
        if sex not in code_table("0001"):
            raise error_at(
                pid, 8, f"sex {sex!r} is not in HL7 table 0001", ack.TABLE_VALUE_NOT_FOUND
            )
        # A (ambiguous) and N (not applicable) have no DICOM equivalent: Other, Unknown.
        data.sex = {"A": "O", "N": "U"}.get(sex, sex)
    data.address = _address(pid)
    data.phone, data.email = _telecom(pid)
    return data


def _address(pid: Segment) -> str | None:
    reps = pid.repetitions(11)
    if not reps:
        return None
    if reps[0] == NULL:
        return ""
    street, other, city, state, postcode, country = (
        pick(reps[0], pid.delimiters, n).strip() for n in range(1, 7)
    )
    place = " ".join(part for part in (postcode, city) if part)
    lines = [street, other, ", ".join(part for part in (place, state) if part), country]
    return "\n".join(line for line in lines if line)


def _telecom(pid: Segment) -> tuple[str | None, str | None]:
    """Read PID-13: the first phone number and the first e-mail address."""
    reps = pid.repetitions(13)
    if not reps:
        return None, None
    if reps[0] == NULL:
        return "", ""
    phone: str | None = None
    email: str | None = None
    for raw in reps:
        use, kind = pick(raw, pid.delimiters, 2), pick(raw, pid.delimiters, 3)
        address = pick(raw, pid.delimiters, 4).strip()
        if (use == "NET" or kind == "Internet") and address:
            email = email or address
            continue
        number = pick(raw, pid.delimiters, 1).strip()
        if not number:
            parts = [pick(raw, pid.delimiters, n).strip() for n in (5, 6, 7, 8)]
            country, area, local, extension = parts
            number = " ".join(p for p in (f"+{country}" if country else "", area, local) if p)
            number += f" ext. {extension}" if extension else ""
        phone = phone or number[:32] or None
    if email is not None and ("@" not in email or len(email) > 254):
        raise error_at(pid, 13, f"{email!r} is not an e-mail address", component=4)
    return phone, email


@dataclass(frozen=True)
class MergeData:
    """MRG: the identifiers of the record that is merged away."""

    prior_identifiers: list[Identifier]


def parse_merge(mrg: Segment, default_issuer: str) -> MergeData:
    return MergeData(prior_identifiers=parse_identifiers(mrg, 1, default_issuer))


# ---------------------------------------------------------------- PV1


@dataclass(frozen=True)
class VisitData:
    patient_class: str = ""
    location: str = ""
    attending_doctor: str = ""
    referring_doctor: str = ""
    visit_number: str = ""


def person_name(segment: Segment, number: int, rep: int = 0) -> str:
    """Read an XCN (id^family^given^middle^suffix^prefix) as a DICOM PN: F^G^M^P^S."""
    family = segment.value(number, 2, rep=rep)
    if not family:
        return ""
    given, middle, suffix, prefix = (segment.value(number, n, rep=rep) for n in (3, 4, 5, 6))
    return "^".join([family, given, middle, prefix, suffix]).rstrip("^")[:192]


def parse_visit(pv1: Segment | None) -> VisitData:
    if pv1 is None:
        return VisitData()
    location = "/".join(part for part in (pv1.value(3, n) for n in (1, 2, 3)) if part)
    return VisitData(
        patient_class=pv1.value(2),
        location=location,
        attending_doctor=person_name(pv1, 7),
        referring_doctor=person_name(pv1, 8),
        visit_number=pv1.value(19),
    )


# ---------------------------------------------------------------- ORC, OBR, TQ1, IPC


@dataclass
class OrderData:
    """One ORC with its OBR (and TQ1, IPC when sent): one order of one procedure."""

    control: str
    placer_order_number: str = ""
    filler_order_number: str = ""
    order_status: str = ""
    procedure_code: str = ""
    procedure_alternate_code: str = ""
    procedure_text: str = ""
    scheduled_start: dt.datetime | None = None
    priority: str = ""
    referring_physician_name: str = ""
    reason: str = ""
    accession_number: str = ""
    control_reason: str = ""
    # Where each value came from, so that a later error can name the field.
    locations: dict[str, ack.ErrorLocation] = field(default_factory=dict)

    def location(self, name: str, fallback: str = "ORC") -> ack.ErrorLocation:
        return self.locations.get(name, ack.ErrorLocation(fallback))


def _first(*candidates: tuple[Segment | None, int, int]) -> tuple[str, Segment | None, int]:
    """Return the first non-empty (value, segment, field) among (segment, field, component)."""
    for segment, number, component in candidates:
        if segment is not None:
            value = segment.value(number, component).strip()
            if value and value != NULL:
                return value, segment, number
    return "", None, 0


def _place(segment: Segment | None, number: int, component: int = 0) -> ack.ErrorLocation | None:
    if segment is None:
        return None
    return ack.ErrorLocation(segment.id, segment.sequence, number, component)


def parse_order(
    orc: Segment,
    obr: Segment | None,
    tz: dt.tzinfo,
    *,
    tq1: Segment | None = None,
    ipc: Segment | None = None,
) -> OrderData:
    """Read one order: control (ORC-1), numbers, procedure (OBR-4), start, priority, people."""
    control = orc.value(1).strip().upper()
    if not control:
        raise error_at(orc, 1, "order control is empty", ack.REQUIRED_FIELD_MISSING)
    if control not in code_table("0119"):
        raise error_at(
            orc, 1, f"order control {control!r} is not in HL7 table 0119", ack.TABLE_VALUE_NOT_FOUND
        )
    order = OrderData(control=control)
    locations = order.locations
    locations["control"] = ack.ErrorLocation("ORC", orc.sequence, 1)
    locations["order_status"] = ack.ErrorLocation("ORC", orc.sequence, 5)
    order.placer_order_number, segment, number = _first((orc, 2, 1), (obr, 2, 1))
    if place := _place(segment, number):
        locations["placer_order_number"] = place
    order.filler_order_number, segment, number = _first((orc, 3, 1), (obr, 3, 1))
    if place := _place(segment, number):
        locations["filler_order_number"] = place
    for name in ("placer_order_number", "filler_order_number"):
        if len(getattr(order, name)) > 64:
            raise FieldError(locations[name], "order number is over 64 characters")
    status = orc.value(5).strip().upper()
    if status and status not in code_table("0038"):
        raise error_at(
            orc, 5, f"order status {status!r} is not in HL7 table 0038", ack.TABLE_VALUE_NOT_FOUND
        )
    order.order_status = status
    order.control_reason = orc.value(16, 2) or orc.value(16, 1)
    if obr is not None:
        locations["procedure"] = ack.ErrorLocation("OBR", obr.sequence, 4)
        order.procedure_code = obr.value(4, 1).strip()
        order.procedure_text = obr.value(4, 2).strip()
        order.procedure_alternate_code = obr.value(4, 4).strip()
    if ipc is not None:
        order.accession_number = ipc.value(1).strip()
        locations["accession_number"] = ack.ErrorLocation("IPC", ipc.sequence, 1)
    if not order.accession_number and order.filler_order_number:
        order.accession_number = order.filler_order_number
        locations["accession_number"] = locations["filler_order_number"]
    if len(order.accession_number) > 16:
        raise FieldError(
            locations["accession_number"],
            f"accession number {order.accession_number!r} is over 16 characters",
        )
    _read_timing(order, orc, obr, tq1, tz)
    order.referring_physician_name = next(
        (name for name in (person_name(orc, 12), person_name(obr, 16) if obr else "") if name),
        "",
    )
    if obr is not None:
        order.reason = (obr.value(31, 2) or obr.value(31, 1) or obr.value(13)).strip()
    return order


def _read_timing(
    order: OrderData, orc: Segment, obr: Segment | None, tq1: Segment | None, tz: dt.tzinfo
) -> None:
    """Start and priority: TQ1 (v2.5), else ORC-7 / OBR-27 (TQ), else OBR-36, OBR-6."""
    # (segment, field, component) holding a start time, in order of preference.
    starts: list[tuple[Segment | None, int, int]] = [
        (tq1, 7, 1),
        (orc, 7, 4),
        (obr, 27, 4),
        (obr, 36, 1),
        (obr, 6, 1),
    ]
    for segment, number, component in starts:
        if segment is None:
            continue
        value = segment.value(number, component)
        if value and value != NULL:
            order.scheduled_start = parse_timestamp(segment, number, tz, component=component)
            order.locations["scheduled_start"] = ack.ErrorLocation(
                segment.id, segment.sequence, number, component if component > 1 else 0
            )
            break
    priorities: list[tuple[Segment | None, int, int]] = [
        (tq1, 9, 1),
        (orc, 7, 6),
        (obr, 27, 6),
        (obr, 5, 1),
    ]
    for segment, number, component in priorities:
        if segment is None:
            continue
        value = segment.value(number, component).strip().upper()
        if not value or value == NULL:
            continue
        # TQ.6 may hold several codes (S~A): the first one rules.
        code = value.split(segment.delimiters.repetition)[0]
        if code not in PRIORITIES:
            raise error_at(
                segment,
                number,
                f"priority {code!r} is not in HL7 table 0027",
                ack.TABLE_VALUE_NOT_FOUND,
                component=component if component > 1 else 0,
            )
        order.priority = PRIORITIES[code]
        break


@dataclass
class OrderGroup:
    """The segments of one order in an ORM^O01 or OMI^O23: ORC, then OBR, TQ1, IPC."""

    orc: Segment
    obr: Segment | None = None
    tq1: Segment | None = None
    ipc: Segment | None = None


def order_groups(message: Message) -> list[OrderGroup]:
    """Return the order groups of MESSAGE, one for each ORC, in order."""
    groups: list[OrderGroup] = []
    for segment in message.segments:
        if segment.id == "ORC":
            groups.append(OrderGroup(segment))
        elif groups and segment.id in ("OBR", "TQ1", "IPC"):
            name = segment.id.lower()
            if getattr(groups[-1], name) is None:
                setattr(groups[-1], name, segment)
    return groups


def zone(name: str) -> dt.tzinfo:
    return ZoneInfo(name)
