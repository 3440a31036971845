"""C-FIND attribute matching (PS3.4 C.2.2.2) as plain functions; no Django here.

The worklist selector narrows the rows in SQL with the patterns made here, then checks
every candidate with the exact rules below, so a query gets the same answer on SQLite
and on PostgreSQL whatever their collations do with case and non-ASCII letters.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

# PS3.4 C.2.2.2.4: '*' matches any run of characters, '?' exactly one.
WILDCARDS = frozenset("*?")
# The escape character of the LIKE patterns made here (ESCAPE '!').
LIKE_ESCAPE = "!"

_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
# PS3.5 6.2 TM: HH[MM[SS[.F{1,6}]]]; the ACR-NEMA form with colons is still seen in queries.
_TIME = re.compile(r"^(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?$")
_OFFSET = re.compile(r"^([+-])(\d{2})(\d{2})$")


class InvalidMatchingKey(ValueError):
    """A key whose value cannot be matched: bad syntax, or a range that ends before it starts."""


def is_universal(value: str) -> bool:
    """Tell whether VALUE matches everything: empty (C.2.2.2.3) or a lone '*' (C.2.2.2.4)."""
    stripped = value.strip()
    return stripped == "" or stripped == "*"


def has_wildcards(value: str) -> bool:
    return any(char in WILDCARDS for char in value)


def _fold(value: str, ignore_case: bool) -> str:
    return value.upper() if ignore_case else value


def wildcard_regex(pattern: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    """Return a regular expression equivalent to the C-FIND PATTERN (PS3.4 C.2.2.2.4)."""
    parts = []
    for char in pattern:
        if char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    return re.compile("".join(parts) + r"\Z", flags)


def match_string(key: list[str], value: str, *, ignore_case: bool = False) -> bool:
    """Match VALUE against the values of a string key (single value, wildcards, or a list).

    KEY holds the key's values; more than one is a list of alternatives (PS3.4 C.2.2.2.1
    and C.2.2.2.2 for UIDs). PN keys match case-insensitively (IHE RAD TF-2 4.5).
    """
    if not key or any(is_universal(alternative) for alternative in key):
        return True
    actual = value.strip()
    for alternative in key:
        wanted = alternative.strip()
        if has_wildcards(wanted):
            if wildcard_regex(wanted, ignore_case=ignore_case).match(actual):
                return True
        elif _fold(wanted, ignore_case) == _fold(actual, ignore_case):
            return True
    return False


def like_pattern(value: str) -> str:
    """Return an upper-case SQL LIKE pattern that matches at least what VALUE matches.

    Compared with UPPER(column) ... ESCAPE '!'. Non-ASCII letters become '_' (one
    character), since the databases' UPPER differs on them; the exact check follows in Python.
    """
    parts = []
    for char in value.strip():
        if char == "*":
            parts.append("%")
        elif char == "?" or not char.isascii():
            parts.append("_")
        elif char in "%_" + LIKE_ESCAPE:
            parts.append(LIKE_ESCAPE + char)
        else:
            parts.append(char.upper())
    return "".join(parts)


def person_name_group(value: str) -> str:
    """Return the component group of a PN key to match: the first one given (PS3.5 6.2.1.1).

    Names are kept with one group, so a query that gives only the ideographic group
    ("=山田^太郎") is matched with that group.
    """
    for group in value.split("="):
        if group.strip():
            return group.strip().rstrip("^")
    return ""


@dataclass(frozen=True)
class Range:
    """Inclusive bounds of a date-time range, in the query's time zone; None is open."""

    start: dt.datetime | None
    end: dt.datetime | None

    def contains(self, moment: dt.datetime) -> bool:
        if self.start is not None and moment < self.start:
            return False
        return self.end is None or moment <= self.end


def parse_date(value: str) -> dt.date:
    """Parse a DA value YYYYMMDD (PS3.5 6.2)."""
    match = _DATE.match(value.strip())
    if not match:
        raise InvalidMatchingKey("not a date (YYYYMMDD)")
    try:
        return dt.date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError as exc:
        raise InvalidMatchingKey("not a valid date") from exc


def parse_time(value: str) -> tuple[dt.time, dt.time]:
    """Parse a TM value; return the first and last instant it stands for at its precision.

    "10" is 10:00:00 to 10:59:59.999999; "1030" is 10:30:00 to 10:30:59.999999.
    """
    match = _TIME.match(value.strip())
    if not match:
        raise InvalidMatchingKey("not a time (HHMMSS.FFFFFF)")
    hour, minute, second, fraction = match.groups()
    try:
        if minute is None:
            return dt.time(int(hour)), dt.time(int(hour), 59, 59, 999999)
        if second is None:
            return dt.time(int(hour), int(minute)), dt.time(int(hour), int(minute), 59, 999999)
        # PS3.5 allows a leap second "60"; it cannot be a Python time, so it is the last one.
        sec = min(int(second), 59)
        if fraction is None:
            return dt.time(int(hour), int(minute), sec), dt.time(
                int(hour), int(minute), sec, 999999
            )
        digits = len(fraction)
        micro = int(fraction.ljust(6, "0"))
        last = micro + 10 ** (6 - digits) - 1
        return dt.time(int(hour), int(minute), sec, micro), dt.time(
            int(hour), int(minute), sec, last
        )
    except ValueError as exc:
        raise InvalidMatchingKey("not a valid time") from exc


def _split_range(value: str) -> tuple[str, str] | None:
    stripped = value.strip()
    if "-" not in stripped:
        return None
    if stripped.count("-") > 1:
        raise InvalidMatchingKey("not a range: more than one '-'")
    first, last = stripped.split("-")
    if not first.strip() and not last.strip():
        raise InvalidMatchingKey("not a range: no bound")
    return first.strip(), last.strip()


def date_bounds(value: str) -> tuple[dt.date | None, dt.date | None]:
    """Parse a DA key: single value or range (PS3.4 C.2.2.2.5); None is an open end."""
    parts = _split_range(value)
    if parts is None:
        day = parse_date(value)
        return day, day
    first = parse_date(parts[0]) if parts[0] else None
    last = parse_date(parts[1]) if parts[1] else None
    if first and last and first > last:
        raise InvalidMatchingKey("range ends before it starts")
    return first, last


def time_bounds(value: str) -> tuple[dt.time | None, dt.time | None]:
    """Parse a TM key: single value or range; a range crossing midnight is refused (C.2.2.2.5)."""
    parts = _split_range(value)
    if parts is None:
        return parse_time(value)
    first = parse_time(parts[0])[0] if parts[0] else None
    last = parse_time(parts[1])[1] if parts[1] else None
    if first and last and first > last:
        raise InvalidMatchingKey("range ends before it starts")
    return first, last


def datetime_range(date_key: str, time_key: str, zone: dt.tzinfo) -> Range | None:
    """Combine a DA key and its TM key into one range of date-times in ZONE, or None for all.

    PS3.4 C.2.2.2.5: a date range with a time range is one period, from the first date
    at the first time to the last date at the last time, not the same hours every day.
    A time key alone is handled by `time_of_day_range`.
    """
    if is_universal(date_key):
        return None
    first_day, last_day = date_bounds(date_key)
    first_time, last_time = (None, None) if is_universal(time_key) else time_bounds(time_key)
    start = (
        dt.datetime.combine(first_day, first_time or dt.time.min, tzinfo=zone)
        if first_day
        else None
    )
    end = dt.datetime.combine(last_day, last_time or dt.time.max, tzinfo=zone) if last_day else None
    if start and end and start > end:
        raise InvalidMatchingKey("range ends before it starts")
    return Range(start, end)


def time_of_day_range(time_key: str) -> tuple[dt.time | None, dt.time | None] | None:
    """Return the bounds of a TM key used without a date, or None for all times."""
    if is_universal(time_key):
        return None
    return time_bounds(time_key)


def match_date(key: str, value: dt.date | None) -> bool:
    """Match a date against a DA key; an entity without a date matches only universally."""
    if is_universal(key):
        return True
    if value is None:
        return False
    first, last = date_bounds(key)
    return (first is None or value >= first) and (last is None or value <= last)


def parse_utc_offset(value: str) -> dt.timezone:
    """Parse Timezone Offset From UTC (0008,0201): &ZZXX, e.g. "+0100" (PS3.3 C.12.1.1.8)."""
    match = _OFFSET.match(value.strip())
    if not match:
        raise InvalidMatchingKey("not a UTC offset (+HHMM or -HHMM)")
    sign, hours, minutes = match.groups()
    delta = dt.timedelta(hours=int(hours), minutes=int(minutes))
    if delta > dt.timedelta(hours=14) or int(minutes) >= 60:
        raise InvalidMatchingKey("not a UTC offset (+HHMM or -HHMM)")
    return dt.timezone(-delta if sign == "-" else delta)


def format_utc_offset(moment: dt.datetime) -> str:
    """Return MOMENT's offset as &ZZXX."""
    offset = moment.utcoffset() or dt.timedelta(0)
    sign = "-" if offset < dt.timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return f"{sign}{minutes // 60:02d}{minutes % 60:02d}"
