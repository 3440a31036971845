"""General acknowledgements (ACK) of HL7 v2 messages, addressed from the MSH they answer.

Plain string handling: the ACK is written with the delimiters of the message it answers,
so the fields it echoes (MSH-3, MSH-4, MSH-10) go back byte for byte as they came.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

# HL7 table 0008: acknowledgment codes (MSA-1), original acknowledgment mode.
APPLICATION_ACCEPT = "AA"
APPLICATION_ERROR = "AE"
APPLICATION_REJECT = "AR"

# HL7 table 0357: message error condition codes (ERR-3).
SEGMENT_SEQUENCE_ERROR = "100"
REQUIRED_FIELD_MISSING = "101"
DATA_TYPE_ERROR = "102"
TABLE_VALUE_NOT_FOUND = "103"
UNSUPPORTED_MESSAGE_TYPE = "200"
UNSUPPORTED_EVENT_CODE = "201"
UNSUPPORTED_PROCESSING_ID = "202"
UNSUPPORTED_VERSION_ID = "203"
UNKNOWN_KEY_IDENTIFIER = "204"
DUPLICATE_KEY_IDENTIFIER = "205"
APPLICATION_RECORD_LOCKED = "206"
APPLICATION_INTERNAL_ERROR = "207"
_ERROR_CONDITIONS = {
    SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    REQUIRED_FIELD_MISSING: "Required field missing",
    DATA_TYPE_ERROR: "Data type error",
    TABLE_VALUE_NOT_FOUND: "Table value not found",
    UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
    UNSUPPORTED_VERSION_ID: "Unsupported version id",
    UNKNOWN_KEY_IDENTIFIER: "Unknown key identifier",
    DUPLICATE_KEY_IDENTIFIER: "Duplicate key identifier",
    APPLICATION_RECORD_LOCKED: "Application record locked",
    APPLICATION_INTERNAL_ERROR: "Application internal error",
}
# HL7 table 0516: error severity (ERR-4).
SEVERITY_ERROR = "E"

DEFAULT_FIELD_SEPARATOR = "|"
DEFAULT_ENCODING_CHARACTERS = "^~\\&"
# The version an ACK claims when the message it answers has no readable MSH.
DEFAULT_VERSION = "2.5.1"
DEFAULT_PROCESSING_ID = "P"
SEGMENT_TERMINATOR = "\r"
# Senders that break segments with LF or CRLF instead of CR are read all the same.
_SEGMENT_BREAK = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class ErrorLocation:
    """Where in a message an error is: ERR-2 (v2.5 ERL), or ERR-1 before v2.5 (ELD)."""

    segment_id: str
    sequence: int = 1  # which occurrence of the segment, 1-based
    field: int = 0
    component: int = 0

    def __str__(self) -> str:
        if not self.field:
            return self.segment_id
        return f"{self.segment_id}-{self.field}" + (f".{self.component}" if self.component else "")


class HeaderError(ValueError):
    """The message has no MSH segment that can be read."""

    def __init__(self, text: str, error_code: str = SEGMENT_SEQUENCE_ERROR) -> None:
        super().__init__(text)
        self.text = text
        self.error_code = error_code


@dataclass(frozen=True)
class MessageHeader:
    """The MSH segment of a message: fields[n] is MSH-n (fields[0] is "MSH")."""

    fields: tuple[str, ...]

    def field(self, number: int) -> str:
        """Return MSH-NUMBER as it was sent, or "" if the segment is shorter."""
        return self.fields[number] if number < len(self.fields) else ""

    @property
    def field_separator(self) -> str:
        return self.fields[1]

    @property
    def encoding_characters(self) -> str:
        return self.fields[2]

    @property
    def component_separator(self) -> str:
        return self.encoding_characters[0]

    @property
    def sending_application(self) -> str:
        return self.field(3)

    @property
    def sending_facility(self) -> str:
        return self.field(4)

    @property
    def message_type(self) -> tuple[str, str]:
        """Return (message code, trigger event) of MSH-9, e.g. ("ADT", "A01")."""
        components = self.field(9).split(self.component_separator)
        return components[0], components[1] if len(components) > 1 else ""

    @property
    def control_id(self) -> str:
        return self.field(10)

    @property
    def processing_id(self) -> str:
        return self.field(11)

    @property
    def version_id(self) -> str:
        return self.field(12)

    @property
    def character_set(self) -> str:
        return self.field(18)


def split_segments(message: str) -> list[str]:
    """Return the non-empty segments of MESSAGE."""
    return [segment for segment in _SEGMENT_BREAK.split(message) if segment]


def parse_header(message: str) -> MessageHeader:
    """Read the MSH segment that starts MESSAGE, or raise HeaderError saying why not."""
    segments = split_segments(message)
    if not segments or not segments[0].startswith("MSH"):
        raise HeaderError("no MSH segment")
    msh = segments[0]
    if len(msh) < 4:
        raise HeaderError("MSH-1 field separator missing", REQUIRED_FIELD_MISSING)
    separator = msh[3]
    if separator.isalnum() or separator.isspace():
        raise HeaderError(f"MSH-1 field separator {separator!r} is invalid", DATA_TYPE_ERROR)
    raw = msh.split(separator)
    encoding = raw[1] if len(raw) > 1 else ""
    # HL7 v2 chapter 2, message delimiters: four; v2.7 adds a fifth, the truncation character.
    if (
        len(encoding) not in (4, 5)
        or len(set(encoding + separator)) != len(encoding) + 1
        or any(char.isalnum() or char.isspace() for char in encoding)
    ):
        raise HeaderError(f"MSH-2 encoding characters {encoding!r} are invalid", DATA_TYPE_ERROR)
    return MessageHeader(fields=("MSH", separator, *raw[1:]))


def escape(text: str, field_separator: str, encoding_characters: str) -> str:
    """Escape the delimiters in TEXT so it reads back as one value (HL7 v2 escape sequences)."""
    component, repetition, escape_char, subcomponent = list(encoding_characters[:4])
    sequences = {
        escape_char: "E",
        field_separator: "F",
        component: "S",
        subcomponent: "T",
        repetition: "R",
    }
    if len(encoding_characters) > 4:
        sequences[encoding_characters[4]] = "P"
    return "".join(
        f"{escape_char}{sequences[char]}{escape_char}" if char in sequences else char
        for char in text
    )


def new_control_id() -> str:
    """Return a fresh message control id: 20 random hex digits, within MSH-10's 20 characters."""
    return secrets.token_hex(10).upper()


def _before_v25(header: MessageHeader | None) -> bool:
    version = header.version_id.split(header.component_separator)[0] if header else ""
    return version.startswith(("2.1", "2.2", "2.3", "2.4"))


def build_ack(
    header: MessageHeader | None,
    code: str,
    text: str,
    *,
    sending_application: str,
    sending_facility: str,
    error_code: str | None = None,
    error_location: ErrorLocation | None = None,
    control_id: str | None = None,
    now: datetime | None = None,
) -> str:
    """Return the ACK answering the message with HEADER (None: no readable MSH)."""
    separator = header.field_separator if header else DEFAULT_FIELD_SEPARATOR
    encoding = header.encoding_characters if header else DEFAULT_ENCODING_CHARACTERS
    component = encoding[0]
    trigger = header.message_type[1] if header else ""
    timestamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")
    msh = [
        "MSH",
        encoding,
        sending_application,
        sending_facility,
        header.sending_application if header else "",
        header.sending_facility if header else "",
        timestamp,
        "",
        f"ACK{component}{trigger}{component}ACK" if trigger else "ACK",
        control_id or new_control_id(),
        (header.processing_id if header else "") or DEFAULT_PROCESSING_ID,
        (header.version_id if header else "") or DEFAULT_VERSION,
    ]
    if header and header.character_set:
        msh += [""] * 5 + [header.character_set]  # MSH-13 to MSH-17 empty, MSH-18
    escaped = escape(text, separator, encoding)
    segments = [
        separator.join(msh),
        separator.join(["MSA", code, header.control_id if header else "", escaped]),
    ]
    if error_code:
        name = _ERROR_CONDITIONS.get(error_code, "")
        condition = component.join([error_code, name, "HL70357"])
        location = ""
        legacy = ""  # ERR-1, what versions before 2.5 read instead of ERR-2 to ERR-8
        if error_location is not None:
            place = [
                error_location.segment_id,
                str(error_location.sequence),
                str(error_location.field or ""),
            ]
            location = component.join(
                [
                    *place,
                    "1" if error_location.component else "",
                    str(error_location.component or ""),
                ]
            ).rstrip(component)
            if _before_v25(header):
                subcomponent = encoding[3]
                code = subcomponent.join([error_code, name, "HL70357"])
                legacy = component.join([*place, code])
        # ERR-2 location, ERR-3 error code, ERR-4 severity, ERR-8 user message.
        segments.append(
            separator.join(
                ["ERR", legacy, location, condition, SEVERITY_ERROR, "", "", "", escaped]
            )
        )
    return SEGMENT_TERMINATOR.join(segments) + SEGMENT_TERMINATOR
