"""The ER7 reader and the segment mapping: plain functions, held to hl7apy as the reference."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from ris.hl7 import ack, er7, parsing
from ris.hl7.parsing import FieldError, Identifier

BERLIN = ZoneInfo("Europe/Berlin")


def build(segment_id: str, values: dict[int, str]) -> str:
    """Return a segment with VALUES at their field numbers (so that no pipe is miscounted)."""
    fields = [""] * (max(values) + 1)
    fields[0] = segment_id
    for number, value in values.items():
        fields[number] = value
    return "|".join(fields)


ADT = "\r".join(
    [
        "MSH|^~\\&|HIS|GENERAL HOSPITAL|RISPACS|RADIOLOGY|20250301083000||ADT^A08^ADT_A01"
        "|C1|P|2.5.1",
        "EVN|A08|20250301083000",
        build(
            "PID",
            {
                1: "1",
                3: "PAT-1^^^HOSP^MR~NAT-9^^^&1.2.3&ISO^NI~ACC-7^^^HOSP^AN",
                5: "O\\S\\BRIEN-SMITH^ANNE^MARIE^JR^DR~ALIAS^ANNIE^^^^^A",
                7: "19750630",
                8: "F",
                11: "1 Main St^Flat 2^Springfield^ST^12345^USA",
                13: "555-0100^PRN^PH~^NET^Internet^anne@example.org",
            },
        ),
        build(
            "PV1",
            {
                1: "1",
                2: "O",
                3: "RAD^R1^B2",
                7: "1234^ATTEND^ARTHUR",
                8: "5678^REFER^RITA",
                19: "VN-1",
            },
        ),
    ]
)
ORM = "\r".join(
    [
        "MSH|^~\\&|HIS|HOSP|RIS|RAD|20250301083000||ORM^O01|C2|P|2.3",
        "PID|1||PAT-1^^^HOSP^MR||TESTPERSON^ALEX",
        build(
            "ORC",
            {
                1: "NW",
                2: "PLC-1^HIS",
                3: "ACC-1",
                5: "SC",
                7: "^^^20250302100000^^S",
                9: "20250301",
                12: "99^ORDERING^OLIVIA",
            },
        ),
        build(
            "OBR",
            {
                1: "1",
                2: "PLC-1",
                3: "ACC-1",
                4: "CTHEAD^CT head^L^70450^CT HEAD^C4",
                13: "Pain",
                16: "77^OBR^PROVIDER",
                27: "^^^20250303110000^^R",
                31: "^Trauma \\T\\ fall",
            },
        ),
    ]
)


def segment(text: str, segment_id: str) -> er7.Segment:
    found = er7.parse(text).first(segment_id)
    assert found is not None
    return found


# ---------------------------------------------------------------- ER7


def test_fields_are_numbered_as_hl7_numbers_them() -> None:
    message = er7.parse(ADT)
    assert message.ids == ["MSH", "EVN", "PID", "PV1"]
    msh = message.msh
    assert (msh.raw(1), msh.raw(2), msh.raw(9), msh.raw(10)) == (
        "|",
        "^~\\&",
        "ADT^A08^ADT_A01",
        "C1",
    )
    assert msh.repetitions(2) == ["^~\\&"]  # MSH-2 holds the repetition separator itself
    pid = message.first("PID")
    assert pid is not None
    assert pid.value(3, 1, rep=1) == "NAT-9"
    assert pid.value(3, 4, 2, rep=1) == "1.2.3"
    assert pid.value(5) == "O^BRIEN-SMITH"  # \S\ unescaped
    assert pid.value(99) == ""
    assert pid.location(3, 4) == "PID-3.4"


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f", "a|b^c&d~e\\f"),
        ("line one\\.br\\line two", "line one\nline two"),
        ("\\H\\bold\\N\\", "bold"),
        ("\\X414243\\", "ABC"),
        ("no escape", "no escape"),
        ("lone \\ escape", "lone \\ escape"),
        ("\\Q\\ unknown", "\\Q\\ unknown"),
    ],
)
def test_unescape(raw: str, text: str) -> None:
    assert er7.unescape(raw) == text


def test_escape_reads_back_as_the_same_text() -> None:
    text = "x|y^z&w~v\\u\nnext line"
    escaped = er7.escape(text)
    assert not set("|^&~") & set(escaped.replace("\\F\\", "").replace("\\S\\", ""))
    assert er7.unescape(escaped) == text


def test_other_delimiters_are_read_from_msh() -> None:
    text = ADT.replace("|", "#").replace("^", "@").replace("\\S\\", "\\S\\")
    pid = segment(text, "PID")
    assert pid.delimiters.field == "#"
    assert pid.value(3, 4, rep=0) == "HOSP"
    assert pid.value(5, 2) == "ANNE"


@pytest.mark.parametrize("bad", ["P!D|x", "pid|x", "PIDX|x", "MSH|^~\\&|again"])
def test_a_malformed_segment_is_refused_with_its_position(bad: str) -> None:
    with pytest.raises(er7.SegmentError) as caught:
        er7.parse(ADT + "\r" + bad)
    assert caught.value.index == 5


@pytest.mark.parametrize("text", [ADT, ORM])
def test_the_reader_agrees_with_hl7apy(text: str) -> None:
    """Every field, repetition and component as hl7apy reads them, escapes intact."""
    reference = parse_message(text, find_groups=False, validation_level=VALIDATION_LEVEL.TOLERANT)
    ours = er7.parse(text)
    assert [s.name for s in reference.children] == ours.ids
    for theirs, mine in zip(reference.children, ours.segments, strict=True):
        names = dict.fromkeys(field.name for field in theirs.children)
        for name in names:
            number = int(name.split("_")[1])
            if mine.id == "MSH" and number <= 2:
                continue
            repetitions = theirs.children.get(name)
            assert mine.repetitions(number) == [f.to_er7() for f in repetitions], name
            for index, repetition in enumerate(repetitions):
                for component in repetition.children:
                    # A field of a simple type has one child named after the type.
                    suffix = component.name.rsplit("_", 1)[-1]
                    position = int(suffix) if suffix.isdigit() else 1
                    raw = er7.components(mine.repetitions(number)[index], mine.delimiters)
                    assert raw[position - 1] == component.to_er7(), f"{name}.{position}"
                    for sub in getattr(component, "children", []):
                        tail = sub.name.rsplit("_", 1)[-1]
                        at = int(tail) if tail.isdigit() else 1
                        expected = er7.unescape(sub.to_er7())
                        got = mine.value(number, position, at, rep=index)
                        assert got == expected, f"{name}.{position}.{at}"


# ---------------------------------------------------------------- PID and friends


def test_pid_becomes_patient_data() -> None:
    data = parsing.parse_patient(segment(ADT, "PID"), "")
    # AN (account number) names no person: left out.
    assert data.identifiers == [
        Identifier("PAT-1", "HOSP", "MR"),
        Identifier("NAT-9", "1.2.3", "NI"),
    ]
    assert (data.family_name, data.given_name, data.middle_name) == (
        "O^BRIEN-SMITH",
        "ANNE",
        "MARIE",
    )
    assert (data.name_suffix, data.name_prefix) == ("JR", "DR")
    assert data.birth_date == dt.date(1975, 6, 30)
    assert data.sex == "F"
    assert data.address == "1 Main St\nFlat 2\n12345 Springfield, ST\nUSA"
    assert (data.phone, data.email) == ("555-0100", "anne@example.org")


def test_the_legal_name_wins_over_the_first() -> None:
    pid = segment(
        "MSH|^~\\&|A|B|C|D|2025||ADT^A08|1|P|2.5.1\rPID|1||X^^^H||NICK^N^^^^^N~LEGAL^L^^^^^L", "PID"
    )
    data = parsing.parse_patient(pid, "")
    assert (data.family_name, data.given_name) == ("LEGAL", "L")


def test_empty_fields_change_nothing_and_null_clears() -> None:
    pid = segment('MSH|^~\\&|A|B|C|D|2025||ADT^A08|1|P|2.5.1\rPID|1||X^^^H||||""|""', "PID")
    data = parsing.parse_patient(pid, "")
    assert data.changes() == {"birth_date": None, "sex": "U"}


def test_default_assigning_authority_fills_a_missing_one() -> None:
    pid = segment("MSH|^~\\&|A|B|C|D|2025||ADT^A08|1|P|2.5.1\rPID|1||X-1", "PID")
    with pytest.raises(FieldError) as caught:
        parsing.parse_patient(pid, "")
    assert str(caught.value.location) == "PID-3.4"
    assert parsing.parse_patient(pid, "LOCAL").identifiers == [Identifier("X-1", "LOCAL", "MR")]


def test_pv1() -> None:
    visit = parsing.parse_visit(segment(ADT, "PV1"))
    assert visit.patient_class == "O"
    assert visit.location == "RAD/R1/B2"
    assert visit.attending_doctor == "ATTEND^ARTHUR"
    assert visit.referring_doctor == "REFER^RITA"
    assert visit.visit_number == "VN-1"


def test_mrg() -> None:
    mrg = segment(
        "MSH|^~\\&|A|B|C|D|2025||ADT^A40|1|P|2.5.1\rMRG|OLD-1^^^HOSP^MR~OLD-2^^^EMR", "MRG"
    )
    assert parsing.parse_merge(mrg, "").prior_identifiers == [
        Identifier("OLD-1", "HOSP", "MR"),
        Identifier("OLD-2", "EMR", "MR"),
    ]


# ---------------------------------------------------------------- times


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20250302100000", dt.datetime(2025, 3, 2, 10, 0, tzinfo=BERLIN)),
        ("202503021000", dt.datetime(2025, 3, 2, 10, 0, tzinfo=BERLIN)),
        ("20250302", dt.datetime(2025, 3, 2, 0, 0, tzinfo=BERLIN)),
        ("20250302100000.25", dt.datetime(2025, 3, 2, 10, 0, 0, 250000, tzinfo=BERLIN)),
        ("20250302100000+0000", dt.datetime(2025, 3, 2, 10, 0, tzinfo=dt.UTC)),
        ("20250702100000-0430", dt.datetime(2025, 7, 2, 14, 30, tzinfo=dt.UTC)),
        # Summer time: local 10:00 is 08:00 UTC.
        ("20250702100000", dt.datetime(2025, 7, 2, 8, 0, tzinfo=dt.UTC)),
    ],
)
def test_timestamps_are_aware_and_local_without_an_offset(
    value: str, expected: dt.datetime
) -> None:
    seg = segment(f"MSH|^~\\&|A|B|C|D|2025||ORM^O01|1|P|2.3\rOBR|1|||X|||{value}", "OBR")
    moment = parsing.parse_timestamp(seg, 7, BERLIN)
    assert moment == expected
    assert moment is not None and moment.tzinfo is not None


@pytest.mark.parametrize(
    "value", ["2025130210", "20250230", "2025-03-02", "tomorrow", "20250302250000"]
)
def test_bad_timestamps_name_the_field(value: str) -> None:
    seg = segment(f"MSH|^~\\&|A|B|C|D|2025||ORM^O01|1|P|2.3\rOBR|1|||X|||{value}", "OBR")
    with pytest.raises(FieldError) as caught:
        parsing.parse_timestamp(seg, 7, BERLIN)
    assert str(caught.value.location) == "OBR-7"
    assert caught.value.code == ack.DATA_TYPE_ERROR


# ---------------------------------------------------------------- orders


def test_orm_group_becomes_order_data() -> None:
    message = er7.parse(ORM)
    [group] = parsing.order_groups(message)
    order = parsing.parse_order(group.orc, group.obr, BERLIN)
    assert order.control == "NW"
    assert (order.placer_order_number, order.filler_order_number) == ("PLC-1", "ACC-1")
    assert order.accession_number == "ACC-1"
    assert (order.procedure_code, order.procedure_alternate_code) == ("CTHEAD", "70450")
    # ORC-7 comes before OBR-27.
    assert order.scheduled_start == dt.datetime(2025, 3, 2, 10, 0, tzinfo=BERLIN)
    assert order.priority == "stat"
    assert order.referring_physician_name == "ORDERING^OLIVIA"
    assert order.reason == "Trauma & fall"
    assert order.order_status == "SC"


def test_tq1_comes_before_orc_7() -> None:
    text = ORM + "\rTQ1|1||||||20250309080000||A"
    text = text.replace("\rOBR", "\rTQ1|1||||||20250309080000||A\rOBR", 1)
    message = er7.parse(text)
    [group] = parsing.order_groups(message)
    order = parsing.parse_order(group.orc, group.obr, BERLIN, tq1=group.tq1)
    assert order.scheduled_start == dt.datetime(2025, 3, 9, 8, 0, tzinfo=BERLIN)
    assert order.priority == "urgent"
    assert str(order.location("scheduled_start")) == "TQ1-7"


def test_several_orders_in_one_message() -> None:
    text = ORM + "\rORC|CA|PLC-2\rOBR|1|PLC-2||MRBRAIN"
    groups = parsing.order_groups(er7.parse(text))
    assert [g.orc.value(1) for g in groups] == ["NW", "CA"]
    assert groups[1].obr is not None and groups[1].obr.sequence == 2


@pytest.mark.parametrize(
    ("orc", "location", "code"),
    [
        ("ORC|ZZ|P", "ORC-1", ack.TABLE_VALUE_NOT_FOUND),
        ("ORC||P", "ORC-1", ack.REQUIRED_FIELD_MISSING),
        ("ORC|NW|P|||||^^^2025^^Q", "ORC-7.6", ack.TABLE_VALUE_NOT_FOUND),
        ("ORC|NW|P|ACCESSION-NUMBER-TOO-LONG", "ORC-3", ack.DATA_TYPE_ERROR),
        ("ORC|NW|P|||XX", "ORC-5", ack.TABLE_VALUE_NOT_FOUND),
    ],
)
def test_bad_order_fields_name_the_field(orc: str, location: str, code: str) -> None:
    message = er7.parse(f"MSH|^~\\&|A|B|C|D|2025||ORM^O01|1|P|2.3\r{orc}")
    [group] = parsing.order_groups(message)
    with pytest.raises(FieldError) as caught:
        parsing.parse_order(group.orc, group.obr, BERLIN)
    assert (str(caught.value.location), caught.value.code) == (location, code)


def test_segments_no_version_defines_are_refused_but_z_segments_pass() -> None:
    parsing.check_segments(er7.parse(ADT + "\rZPI|local|data"))
    with pytest.raises(FieldError) as caught:
        parsing.check_segments(er7.parse(ADT + "\rQQQ|1"))
    assert str(caught.value.location) == "QQQ"


# ---------------------------------------------------------------- ACK error segment


def test_ack_names_the_field_in_err_2_and_for_old_versions_in_err_1() -> None:
    location = ack.ErrorLocation("PID", 1, 7)
    for version, err_1 in (("2.5.1", ""), ("2.3", "PID^1^7^102&Data type error&HL70357")):
        header = ack.parse_header(f"MSH|^~\\&|A|B|C|D|2025||ADT^A08|X|P|{version}\r")
        reply = ack.build_ack(
            header,
            ack.APPLICATION_ERROR,
            "PID-7: bad date",
            error_code=ack.DATA_TYPE_ERROR,
            error_location=location,
            sending_application="R",
            sending_facility="F",
        )
        err = reply.split("\r")[2].split("|")
        assert err[1:5] == [err_1, "PID^1^7", "102^Data type error^HL70357", "E"]
        assert err[8] == "PID-7: bad date"
    component = ack.ErrorLocation("PID", 2, 3, 4)
    header = ack.parse_header("MSH|^~\\&|A|B|C|D|2025||ADT^A08|X|P|2.5\r")
    reply = ack.build_ack(
        header,
        "AE",
        "x",
        error_code="101",
        error_location=component,
        sending_application="R",
        sending_facility="F",
    )
    assert reply.split("\r")[2].split("|")[2] == "PID^2^3^1^4"
