"""Reading HL7 v2 messages in their ER7 encoding (HL7 v2.5.1 chapter 2.5 and 2.7).

A message is segments; a segment is fields; a field may repeat, and each repetition
is components, each component subcomponents. Values are unescaped only when read, so
the structure is split once and every delimiter inside a value stays a value.

Plain Python on purpose: hl7apy's object model costs 5-6 ms to parse one ADT or ORM
message on this hardware, more than the whole budget of a message at the listener's
target rate (300 a second, database included). hl7apy remains the reference the tests
hold this reader to, and supplies the code tables and segment definitions (see
`ris.hl7.parsing`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ris.hl7.ack import split_segments

# A segment ID: three upper-case letters or digits, the first a letter (chapter 2.5.2).
SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}\Z")
# HL7's explicit null: the field is to be cleared (chapter 2.5.3, "Null values").
NULL = '""'


@dataclass(frozen=True)
class Delimiters:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""

    @classmethod
    def from_msh(cls, field_separator: str, encoding_characters: str) -> Delimiters:
        chars = encoding_characters
        return cls(
            field=field_separator,
            component=chars[0],
            repetition=chars[1],
            escape=chars[2],
            subcomponent=chars[3],
            truncation=chars[4] if len(chars) > 4 else "",
        )

    @property
    def encoding_characters(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation


DEFAULT_DELIMITERS = Delimiters()


def unescape(raw: str, delimiters: Delimiters = DEFAULT_DELIMITERS) -> str:
    """Return RAW with its escape sequences resolved (chapter 2.7)."""
    esc = delimiters.escape
    if esc not in raw:
        return raw
    out: list[str] = []
    index = 0
    while True:
        start = raw.find(esc, index)
        if start < 0:
            out.append(raw[index:])
            break
        out.append(raw[index:start])
        end = raw.find(esc, start + 1)
        if end < 0:  # a lone escape character is kept as it is
            out.append(raw[start:])
            break
        replacement = _escape_value(raw[start + 1 : end], delimiters)
        out.append(raw[start : end + 1] if replacement is None else replacement)
        index = end + 1
    return "".join(out)


def _escape_value(code: str, delimiters: Delimiters) -> str | None:
    """Return what the escape sequence CODE stands for; None: not one, keep it as sent."""
    simple = {
        "F": delimiters.field,
        "S": delimiters.component,
        "T": delimiters.subcomponent,
        "R": delimiters.repetition,
        "E": delimiters.escape,
        "P": delimiters.truncation,
    }
    if code in simple:
        return simple[code]
    if code in ("H", "N"):  # start/end highlighting: no meaning in plain text
        return ""
    if code.startswith("."):  # formatting commands (chapter 2.7.6): breaks kept, rest dropped
        return "\n" if code[:3] in (".br", ".sp") else ""
    if code.startswith("X") and len(code) % 2 == 1:
        try:
            return bytes.fromhex(code[1:]).decode("latin-1")
        except ValueError:
            return None
    if code[:1] in ("C", "M", "Z"):  # character set switches, locally defined: dropped
        return ""
    return None


def escape(text: str, delimiters: Delimiters = DEFAULT_DELIMITERS) -> str:
    """Escape the delimiters in TEXT so it reads back as one value; line breaks as \\.br\\."""
    esc = delimiters.escape
    sequences = {
        esc: f"{esc}E{esc}",
        delimiters.field: f"{esc}F{esc}",
        delimiters.component: f"{esc}S{esc}",
        delimiters.subcomponent: f"{esc}T{esc}",
        delimiters.repetition: f"{esc}R{esc}",
        "\r": "",
        "\n": f"{esc}.br{esc}",
    }
    if delimiters.truncation:
        sequences[delimiters.truncation] = f"{esc}P{esc}"
    text = text.replace("\r\n", "\n")
    if not any(char in sequences for char in text):
        return text
    return "".join(sequences.get(char, char) for char in text)


class Segment:
    """One segment: `fields[n]` is field n as sent, escapes intact (MSH-1 is the separator)."""

    __slots__ = ("delimiters", "fields", "id", "sequence")

    def __init__(self, segment_id: str, fields: list[str], sequence: int, delimiters: Delimiters):
        self.id = segment_id
        self.fields = fields
        # 1-based position among the segments with the same ID (ERR-2.2).
        self.sequence = sequence
        self.delimiters = delimiters

    def __repr__(self) -> str:
        return f"<Segment {self.id}#{self.sequence}>"

    def raw(self, number: int) -> str:
        """Return field NUMBER as it was sent, or "" when the segment is shorter."""
        return self.fields[number] if 0 < number < len(self.fields) else ""

    def repetitions(self, number: int) -> list[str]:
        """Return the repetitions of field NUMBER as sent; none when the field is empty."""
        raw = self.raw(number)
        if not raw:
            return []
        if self.id == "MSH" and number == 2:
            return [raw]  # the encoding characters hold the repetition separator itself
        return raw.split(self.delimiters.repetition)

    def value(self, number: int, component: int = 1, subcomponent: int = 1, rep: int = 0) -> str:
        """Return one unescaped value: field NUMBER, repetition REP, COMPONENT, SUBCOMPONENT."""
        reps = self.repetitions(number)
        if rep >= len(reps):
            return ""
        return pick(reps[rep], self.delimiters, component, subcomponent)

    def location(self, number: int, component: int = 0) -> str:
        """Return how an error message names a field: PID-3, or PID-3.4 with COMPONENT."""
        return f"{self.id}-{number}" + (f".{component}" if component else "")


def pick(raw: str, delimiters: Delimiters, component: int = 1, subcomponent: int = 1) -> str:
    """Return COMPONENT/SUBCOMPONENT (1-based) of one field repetition RAW, unescaped."""
    if component > 1 or delimiters.component in raw:
        parts = raw.split(delimiters.component)
        raw = parts[component - 1] if component <= len(parts) else ""
    if subcomponent > 1 or delimiters.subcomponent in raw:
        parts = raw.split(delimiters.subcomponent)
        raw = parts[subcomponent - 1] if subcomponent <= len(parts) else ""
    return unescape(raw, delimiters)


def components(raw: str, delimiters: Delimiters) -> list[str]:
    """Return the components of one field repetition RAW, each still escaped."""
    return raw.split(delimiters.component)


class SegmentError(ValueError):
    """A segment that cannot be read: its ID is not a segment ID."""

    def __init__(self, index: int, segment_id: str, text: str) -> None:
        super().__init__(text)
        self.index = index  # 1-based position of the segment in the message
        self.segment_id = segment_id
        self.text = text


class Message:
    """A whole message, split into segments and fields."""

    def __init__(self, segments: list[Segment], delimiters: Delimiters) -> None:
        self.segments = segments
        self.delimiters = delimiters

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def first(self, segment_id: str) -> Segment | None:
        return next((seg for seg in self.segments if seg.id == segment_id), None)

    def all(self, segment_id: str) -> list[Segment]:
        return [seg for seg in self.segments if seg.id == segment_id]

    @property
    def ids(self) -> list[str]:
        return [seg.id for seg in self.segments]


def parse(text: str) -> Message:
    """Split TEXT into segments and fields; raise SegmentError for a malformed segment.

    The MSH segment must have been checked already (`ack.parse_header`).
    """
    raw_segments = split_segments(text)
    first = raw_segments[0]
    separator = first[3]
    encoding = first[4:].split(separator, 1)[0]
    delimiters = Delimiters.from_msh(separator, encoding)
    counts: dict[str, int] = {}
    segments: list[Segment] = []
    for index, raw in enumerate(raw_segments, start=1):
        parts = raw.split(separator)
        segment_id = parts[0]
        if not SEGMENT_ID.match(segment_id):
            shown = segment_id if len(segment_id) <= 10 else segment_id[:10] + "..."
            raise SegmentError(index, segment_id, f"segment {index}: {shown!r} is not a segment ID")
        if segment_id == "MSH":
            if index != 1:
                raise SegmentError(index, segment_id, f"segment {index}: MSH may only come first")
            # MSH-1 is the field separator itself, so MSH-n is parts[n - 1].
            fields = ["MSH", separator, *parts[1:]]
        else:
            fields = parts
        counts[segment_id] = counts.get(segment_id, 0) + 1
        segments.append(Segment(segment_id, fields, counts[segment_id], delimiters))
    return Message(segments, delimiters)
