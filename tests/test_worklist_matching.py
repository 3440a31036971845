"""C-FIND matching rules (PS3.4 C.2.2.2) as plain functions."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest

from worklist import matching
from worklist.matching import InvalidMatchingKey


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        (["CT1"], "CT1", True),
        (["CT1"], "ct1", False),  # single value matching is case-sensitive for AE
        (["CT*"], "CT12", True),
        (["C?1"], "CT1", True),
        (["C?1"], "CTT1", False),
        (["*"], "", True),  # a lone '*' is universal, empty values included
        ([""], "anything", True),
        (["MR", "CT"], "CT", True),  # a list: any of the values
        (["A.B%"], "A.B%", True),  # SQL wildcards are plain characters in DICOM
        (["A_C"], "ABC", False),
    ],
)
def test_string_matching(key: list[str], value: str, expected: bool) -> None:
    assert matching.match_string(key, value) is expected


def test_person_names_match_without_case_including_non_ascii() -> None:
    assert matching.match_string(["MÜLLER^HANS"], "Müller^Hans", ignore_case=True)
    assert matching.match_string(["mül*"], "Müller^Hans", ignore_case=True)
    assert not matching.match_string(["MULLER*"], "Müller^Hans", ignore_case=True)
    assert matching.match_string(["山田*"], "山田^太郎", ignore_case=True)


def test_the_first_component_group_given_is_the_one_matched() -> None:
    assert matching.person_name_group("Yamada^Tarou=山田^太郎") == "Yamada^Tarou"
    assert matching.person_name_group("=山田^太郎=やまだ^たろう") == "山田^太郎"
    assert matching.person_name_group("Doe^John^^^") == "Doe^John"


def test_like_pattern_is_an_upper_case_superset() -> None:
    assert matching.like_pattern("mül*") == "M_L%"
    assert matching.like_pattern("50%_a!?") == "50!%!_A!!_"


@pytest.mark.parametrize(
    ("key", "first", "last"),
    [
        ("20260105", dt.date(2026, 1, 5), dt.date(2026, 1, 5)),
        ("20260105-20260107", dt.date(2026, 1, 5), dt.date(2026, 1, 7)),
        ("-20260107", None, dt.date(2026, 1, 7)),
        ("20260105-", dt.date(2026, 1, 5), None),
    ],
)
def test_date_ranges(key: str, first: dt.date | None, last: dt.date | None) -> None:
    assert matching.date_bounds(key) == (first, last)


@pytest.mark.parametrize(
    "key", ["2026-01-05", "20260132", "20260107-20260105", "-", "2026010", "1-2-3"]
)
def test_bad_dates_are_refused(key: str) -> None:
    with pytest.raises(InvalidMatchingKey):
        matching.date_bounds(key)


def test_time_precision_and_ranges() -> None:
    assert matching.time_bounds("10") == (dt.time(10), dt.time(10, 59, 59, 999999))
    assert matching.time_bounds("1030-1100") == (dt.time(10, 30), dt.time(11, 0, 59, 999999))
    assert matching.time_bounds("103000.5") == (
        dt.time(10, 30, 0, 500000),
        dt.time(10, 30, 0, 599999),
    )
    assert matching.time_bounds("10:30") == (dt.time(10, 30), dt.time(10, 30, 59, 999999))
    with pytest.raises(InvalidMatchingKey, match="ends before"):
        matching.time_bounds("2200-0200")  # crossing midnight is not supported


def test_date_and_time_ranges_combine_into_one_period() -> None:
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")

    def local(day: int, hour: int, minute: int = 0, second: int = 0) -> dt.datetime:
        return dt.datetime(2026, 1, day, hour, minute, second, tzinfo=berlin)

    window = matching.datetime_range("20260105-20260107", "1000-1800", berlin)
    assert window is not None
    # PS3.4 C.2.2.2.5: 5 January 10:00 to 7 January 18:00, not 10 to 18 each day.
    assert window.contains(local(6, 3))
    assert window.contains(local(5, 10))
    assert not window.contains(local(5, 9, 59))
    assert window.contains(local(7, 18, 0, 59))
    assert not window.contains(local(7, 18, 1))
    assert not window.contains(local(5, 10).astimezone(dt.UTC) - dt.timedelta(seconds=1))
    day = matching.datetime_range("20260105", "", berlin)
    assert day == matching.Range(local(5, 0), dt.datetime.combine(local(5, 0), dt.time.max, berlin))
    assert matching.datetime_range("", "1000-1200", berlin) is None


def test_utc_offsets() -> None:
    assert matching.parse_utc_offset("+0130").utcoffset(None) == dt.timedelta(hours=1, minutes=30)
    assert matching.parse_utc_offset("-0500").utcoffset(None) == dt.timedelta(hours=-5)
    with pytest.raises(InvalidMatchingKey):
        matching.parse_utc_offset("+25:00")
    moment = dt.datetime(2026, 1, 5, 10, tzinfo=dt.timezone(dt.timedelta(hours=-3, minutes=-30)))
    assert matching.format_utc_offset(moment) == "-0330"


@pytest.mark.parametrize(
    ("tag", "vr", "value"),
    [
        (0x00100010, "PN", "Testperson^Alex"),
        (0x00100010, "PN", "Ærø^Åse=エロ"),
        (0x00100010, "PN", ""),
        (0x0020000D, "UI", "1.2.826.0.1.3680043.8.498.1"),
        (0x00400001, "AE", "CT1"),
        (0x00400002, "DA", "20261122"),
        (0x00400003, "TM", "101500"),
        (0x00080060, "CS", "CT"),
        (0x00321060, "LO", "CT HEAD"),
        (0x00080050, "SH", ""),
        (0x00400400, "LT", "a comment with a \\ backslash"),
        (0x00321060, "LO", "two\\values"),  # split by pydicom: made the slow way
        (0x00101030, "DS", None),
        (0x001021C0, "US", None),
    ],
)
def test_fast_elements_equal_pydicoms(tag: int, vr: str, value: object) -> None:
    from pydicom import config
    from pydicom.dataelem import DataElement

    from core.dicom_elements import trusted_element

    made = trusted_element(tag, vr, value)
    expected = DataElement(tag, vr, value, validation_mode=config.IGNORE)
    assert made == expected
    assert type(made.value) is type(expected.value)
    assert (made.tag, made.VR, made.is_undefined_length) == (
        expected.tag,
        expected.VR,
        expected.is_undefined_length,
    )
