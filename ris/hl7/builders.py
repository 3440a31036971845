"""Outbound HL7 v2 messages from plain data: ORU^R01, DFT^P03, ORM^O01 status, ADT^A08/A40.

No Django here: the callers (ris.hl7.outbox) turn rows into these dataclasses, so the
reporting and billing code can call the same builders with their own data. Each
segment is assembled with hl7apy for the version of the message (field names and
positions as that version defines them); values are escaped here, leaf by leaf,
because hl7apy leaves the component and subcomponent separators of a value as they are.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Segment

from ris.hl7.er7 import DEFAULT_DELIMITERS, escape
from ris.hl7.parsing import Identifier

SEGMENT_TERMINATOR = "\r"
ENCODING_CHARACTERS = DEFAULT_DELIMITERS.encoding_characters

# HL7 table 0123 result status (OBR-25) and table 0085 observation result status (OBX-11).
RESULT_PRELIMINARY = "P"
RESULT_FINAL = "F"
RESULT_CORRECTED = "C"
# HL7 table 0038 order status (ORC-5).
ORDER_SCHEDULED = "SC"
ORDER_IN_PROCESS = "IP"
ORDER_COMPLETED = "CM"
ORDER_CANCELLED = "CA"
ORDER_DISCONTINUED = "DC"
# HL7 table 0017 transaction type (FT1-6).
CHARGE = "CG"
CREDIT = "CD"

_PRIORITY_CODES = {"stat": "S", "urgent": "A", "routine": "R"}


@dataclass(frozen=True)
class Envelope:
    """The MSH of one message: who sends it to whom, its control id, version and time."""

    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    control_id: str
    created_at: dt.datetime
    tz: dt.tzinfo = dt.UTC
    version: str = "2.5.1"
    character_set: str = "UNICODE UTF-8"
    processing_id: str = "P"


@dataclass(frozen=True)
class Person:
    """A clinician as HL7 names one (XCN): an id, family and given names."""

    family_name: str
    given_name: str = ""
    id: str = ""

    @classmethod
    def from_dicom_name(cls, name: str, id: str = "") -> Person | None:
        """Read a DICOM PN (Family^Given^Middle^Prefix^Suffix); None when it is empty."""
        parts = name.split("^")
        return cls(parts[0], parts[1] if len(parts) > 1 else "", id) if parts[0] else None


@dataclass(frozen=True)
class PatientIdentity:
    identifiers: Sequence[Identifier]
    family_name: str
    given_name: str = ""
    middle_name: str = ""
    name_prefix: str = ""
    name_suffix: str = ""
    birth_date: dt.date | None = None
    sex: str = "U"
    address: str = ""
    phone: str = ""
    email: str = ""


@dataclass(frozen=True)
class OrderIdentity:
    placer_order_number: str
    accession_number: str
    procedure_code: str
    procedure_name: str = ""
    coding_system: str = "L"  # HL7 table 0396: L, local code
    scheduled_start: dt.datetime | None = None
    referring_physician: Person | None = None
    priority: str = "routine"


@dataclass(frozen=True)
class ReportData:
    """A radiology report as ORU^R01 carries it."""

    patient: PatientIdentity
    order: OrderIdentity
    status: str  # RESULT_PRELIMINARY, RESULT_FINAL or RESULT_CORRECTED
    text: str
    observed_at: dt.datetime | None = None
    reported_at: dt.datetime | None = None
    interpreter: Person | None = None


@dataclass(frozen=True)
class ChargeLine:
    """One line of a charge posting (FT1): what was done, how many, for how much."""

    transaction_id: str
    performed_at: dt.datetime
    procedure_code: str
    procedure_name: str = ""
    quantity: Decimal | int = 1
    amount: Decimal = Decimal("0")  # the line's extended amount
    unit_amount: Decimal | None = None
    currency: str = ""
    accession_number: str = ""
    cpt_code: str = ""
    modifiers: Sequence[str] = ()  # CPT modifiers (26, 53 ...), FT1-26 from v2.4 on
    transaction_type: str = CHARGE
    performed_by: Person | None = None
    ordered_by: Person | None = None


@dataclass
class _Builder:
    """Segments of one message, each built by hl7apy for the message's version."""

    envelope: Envelope
    segments: list[str] = field(default_factory=list)

    def add(self, name: str, fields: dict[int, str | list[str]]) -> None:
        segment = Segment(
            name, version=self.envelope.version, validation_level=VALIDATION_LEVEL.TOLERANT
        )
        for number, value in sorted(fields.items()):
            if name == "MSH" and number <= 2:
                # The delimiters themselves: set as a whole, or hl7apy would split MSH-2.
                setattr(segment, f"msh_{number}", value)
                continue
            for repetition in value if isinstance(value, list) else [value]:
                if repetition:
                    segment.add_field(f"{name}_{number}").value = repetition
        self.segments.append(segment.to_er7())

    def time(self, moment: dt.datetime | None) -> str:
        if moment is None:
            return ""
        return moment.astimezone(self.envelope.tz).strftime("%Y%m%d%H%M%S%z")

    def msh(self, code: str, trigger: str, structure: str) -> None:
        env = self.envelope
        # MSH-9.3 (message structure) exists from v2.3.1 on.
        parts = [code, trigger] + ([structure] if env.version != "2.3" else [])
        fields: dict[int, str | list[str]] = {
            1: DEFAULT_DELIMITERS.field,
            2: ENCODING_CHARACTERS,
            3: _esc(env.sending_application),
            4: _esc(env.sending_facility),
            5: _esc(env.receiving_application),
            6: _esc(env.receiving_facility),
            7: self.time(env.created_at),
            9: _join(parts),
            10: _esc(env.control_id),
            11: env.processing_id,
            12: env.version,
        }
        if env.character_set:
            fields[18] = env.character_set
        self.add("MSH", fields)

    def pid(self, patient: PatientIdentity) -> None:
        fields: dict[int, str | list[str]] = {
            1: "1",
            3: [_join([i.value, "", "", i.issuer, i.type]) for i in patient.identifiers],
            5: _join(
                [
                    patient.family_name,
                    patient.given_name,
                    patient.middle_name,
                    patient.name_suffix,
                    patient.name_prefix,
                ]
            ),
            7: patient.birth_date.strftime("%Y%m%d") if patient.birth_date else "",
            8: patient.sex,
        }
        if patient.address:
            # The address lines as the front desk typed them: the first is the street.
            lines = patient.address.splitlines()
            fields[11] = _join([lines[0], " ".join(lines[1:])])
        telecom = []
        if patient.phone:
            telecom.append(_join([patient.phone, "PRN", "PH"]))
        if patient.email:
            telecom.append(_join(["", "NET", "Internet", patient.email]))
        if telecom:
            fields[13] = telecom
        self.add("PID", fields)

    def pv1(self, patient_class: str = "N", visit_number: str = "") -> None:
        fields: dict[int, str | list[str]] = {1: "1", 2: patient_class}
        if visit_number:
            fields[19] = _esc(visit_number)
        self.add("PV1", fields)

    def text(self) -> str:
        return SEGMENT_TERMINATOR.join(self.segments) + SEGMENT_TERMINATOR


def _esc(value: str) -> str:
    return escape(value, DEFAULT_DELIMITERS)


def _join(values: Sequence[str], separator: str = DEFAULT_DELIMITERS.component) -> str:
    """Escape each value and join them as components (or subcomponents), trailing empties cut."""
    return separator.join(_esc(value) for value in values).rstrip(separator)


def _person(person: Person | None, separator: str = DEFAULT_DELIMITERS.component) -> str:
    if person is None:
        return ""
    return _join([person.id, person.family_name, person.given_name], separator)


def _amount(value: Decimal | None, currency: str) -> str:
    """A CP/MO value: the amount, and its currency as a subcomponent when known."""
    if value is None:
        return ""
    return _join([f"{value:.2f}", currency], DEFAULT_DELIMITERS.subcomponent)


def _orc(builder: _Builder, order: OrderIdentity, control: str, status: str) -> None:
    """ORC for ORDER: the placer's number, our accession number, its status and timing."""
    start = builder.time(order.scheduled_start)
    priority = _PRIORITY_CODES.get(order.priority, "R")
    timing = _join(["", "", "", start, "", priority])
    builder.add(
        "ORC",
        {
            1: control,
            2: _esc(order.placer_order_number),
            3: _esc(order.accession_number),
            5: status,
            7: timing,
            9: builder.time(builder.envelope.created_at),
            12: _person(order.referring_physician),
        },
    )


def oru_r01(report: ReportData, envelope: Envelope) -> str:
    """Return the ORU^R01 carrying REPORT: OBR with status P/F/C, one OBX per text line."""
    builder = _Builder(envelope)
    builder.msh("ORU", "R01", "ORU_R01")
    builder.pid(report.patient)
    order = report.order
    procedure = _join([order.procedure_code, order.procedure_name, order.coding_system])
    builder.add(
        "ORC",
        {
            1: "RE",
            2: _esc(order.placer_order_number),
            3: _esc(order.accession_number),
            5: ORDER_COMPLETED,
            12: _person(order.referring_physician),
        },
    )
    builder.add(
        "OBR",
        {
            1: "1",
            2: _esc(order.placer_order_number),
            3: _esc(order.accession_number),
            4: procedure,
            7: builder.time(report.observed_at),
            16: _person(order.referring_physician),
            18: _esc(order.accession_number),
            22: builder.time(report.reported_at),
            24: "RAD",
            25: report.status,
            # OBR-32 principal result interpreter: the signing radiologist (id&family&given).
            32: _person(report.interpreter, DEFAULT_DELIMITERS.subcomponent),
        },
    )
    lines = report.text.replace("\r\n", "\n").split("\n") or [""]
    for number, line in enumerate(lines, start=1):
        builder.add(
            "OBX",
            {
                1: str(number),
                2: "TX",
                3: _join(["GDT", "Report text", "L"]),
                5: _esc(line) or " ",
                11: report.status,
                14: builder.time(report.observed_at),
                16: _person(report.interpreter),
            },
        )
    return builder.text()


def dft_p03(
    patient: PatientIdentity,
    charges: Sequence[ChargeLine],
    envelope: Envelope,
    *,
    visit_number: str = "",
) -> str:
    """Return the DFT^P03 posting CHARGES: one FT1 each (code, quantity, amount)."""
    if not charges:
        raise ValueError("a DFT^P03 needs at least one charge line")
    builder = _Builder(envelope)
    builder.msh("DFT", "P03", "DFT_P03")
    builder.add("EVN", {1: "P03", 2: builder.time(envelope.created_at)})
    builder.pid(patient)
    builder.pv1("O", visit_number)
    for number, charge in enumerate(charges, start=1):
        fields: dict[int, str | list[str]] = {
            1: str(number),
            2: _esc(charge.transaction_id),
            4: builder.time(charge.performed_at),
            5: builder.time(envelope.created_at),
            6: charge.transaction_type,
            7: _join([charge.procedure_code, charge.procedure_name, "L"]),
            8: _esc(charge.procedure_name),
            10: str(charge.quantity),
            11: _amount(charge.amount, charge.currency),
            12: _amount(charge.unit_amount, charge.currency),
            20: _person(charge.performed_by),
            21: _person(charge.ordered_by),
        }
        if envelope.version not in ("2.3", "2.3.1"):
            fields[23] = _esc(charge.accession_number)  # FT1-23 filler order number, v2.4 on
        if charge.cpt_code:
            fields[25] = _join([charge.cpt_code, charge.procedure_name, "C4"])
        if charge.modifiers and envelope.version not in ("2.3", "2.3.1"):
            fields[26] = [_join([modifier, "", "C4"]) for modifier in charge.modifiers]
        builder.add("FT1", fields)
    return builder.text()


def orm_status(
    patient: PatientIdentity, order: OrderIdentity, status: str, envelope: Envelope
) -> str:
    """Return the ORM^O01 telling the placer ORDER's new STATUS (ORC-1 SC, ORC-5)."""
    builder = _Builder(envelope)
    builder.msh("ORM", "O01", "ORM_O01")
    builder.pid(patient)
    _orc(builder, order, "SC", status)
    builder.add(
        "OBR",
        {
            1: "1",
            2: _esc(order.placer_order_number),
            3: _esc(order.accession_number),
            4: _join([order.procedure_code, order.procedure_name, order.coding_system]),
            18: _esc(order.accession_number),
            24: "RAD",
        },
    )
    return builder.text()


def adt_a08(patient: PatientIdentity, envelope: Envelope) -> str:
    """Return the ADT^A08 carrying PATIENT's current demographics."""
    builder = _Builder(envelope)
    builder.msh("ADT", "A08", "ADT_A01")
    builder.add("EVN", {1: "A08", 2: builder.time(envelope.created_at)})
    builder.pid(patient)
    builder.pv1()
    return builder.text()


def adt_a40(survivor: PatientIdentity, merged: Sequence[Identifier], envelope: Envelope) -> str:
    """Return the ADT^A40 telling that the patient known by MERGED is now SURVIVOR."""
    builder = _Builder(envelope)
    builder.msh("ADT", "A40", "ADT_A39")
    builder.add("EVN", {1: "A40", 2: builder.time(envelope.created_at)})
    builder.pid(survivor)
    # MRG-1, prior patient identifier list: every identifier the merged record had.
    builder.add("MRG", {1: [_join([i.value, "", "", i.issuer, i.type]) for i in merged]})
    return builder.text()
