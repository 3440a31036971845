"""A fast writer for the small datasets DIMSE sends: command sets and query identifiers.

pynetdicom encodes every command set (C-STORE-RSP, C-FIND-RSP ...) and every C-FIND
response identifier with pydicom's general-purpose writer, which resolves each element's
VR, character set and value type through many layers: most of the CPU time of a
worklist or study query with a few dozen matches. These datasets are simple (text,
unsigned integers, tags, sequences of the same), so they are written here directly in
Little Endian (PS3.5 7.1), implicit or explicit VR, byte for byte as pydicom writes them.
Anything else (big endian, deflate, a character set with code extensions, an unusual
value type) goes to pydicom as before. `install()` puts this writer where pynetdicom
calls its `encode`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName
from pynetdicom import dimse_messages, dsutils, service_class
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.pdu_primitives import P_DATA

Encoder = Callable[..., bytes | None]

# PS3.5 7.1.2: explicit VRs with a 2-byte reserved field and a 4-byte length.
_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"}
)
# Text VRs whose values the Specific Character Set applies to (PS3.5 6.1.2.3).
_CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "UR"}) | _CHARSET_VRS
_NUMBER_FORMATS = {"US": "H", "UL": "I", "SS": "h", "SL": "i", "FL": "f", "FD": "d"}
# Character sets written here: the default repertoire, Latin-1 and UTF-8 (no code
# extensions, so a value's bytes do not depend on the values before it).
_CODECS = {"": "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin_1", "ISO_IR 192": "utf-8"}
_SPECIFIC_CHARACTER_SET = 0x00080005
_ITEM_TAG = struct.pack("<HH", 0xFFFE, 0xE000)  # PS3.5 7.5.2


class _Unsupported(Exception):
    """This dataset needs pydicom's writer."""


def _codec(ds: Dataset, inherited: str) -> str:
    element = ds.get(_SPECIFIC_CHARACTER_SET)
    if element is None:
        return inherited
    value = element.value
    terms = list(value) if isinstance(value, MultiValue | list) else [value or ""]
    if len(terms) != 1 or terms[0] not in _CODECS:
        raise _Unsupported
    return _CODECS[terms[0]]


def _text(value: Any, vr: str, codec: str) -> bytes:
    if value is None:
        return b""
    if isinstance(value, MultiValue | list | tuple):
        parts = [_text(item, vr, codec) for item in value]
        return b"\\".join(parts)
    if isinstance(value, PersonName):
        value = str(value)
    elif vr == "IS" and isinstance(value, int) and not isinstance(value, bool):
        value = str(int(value))
    if not isinstance(value, str):
        raise _Unsupported
    return value.encode(codec if vr in _CHARSET_VRS else "ascii")


def _value(value: Any, vr: str, implicit: bool, codec: str) -> bytes:
    if vr == "SQ":
        return b"".join(
            _ITEM_TAG + struct.pack("<I", len(body)) + body
            for body in (_dataset(item, implicit, codec) for item in value or [])
        )
    if vr in _TEXT_VRS or vr in ("IS", "DS"):
        data = _text(value, vr, codec)
        if len(data) % 2:
            data += b"\0" if vr == "UI" else b" "
        return data
    if vr in _NUMBER_FORMATS:
        if value is None or value == "":
            return b""
        values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
        return struct.pack(f"<{len(values)}{_NUMBER_FORMATS[vr]}", *values)
    if vr == "AT":
        if value is None or value == "":
            return b""
        tags = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
        return b"".join(struct.pack("<HH", int(tag) >> 16, int(tag) & 0xFFFF) for tag in tags)
    if vr in ("OB", "UN") and isinstance(value, bytes):
        return value + b"\0" if len(value) % 2 else value
    raise _Unsupported


def _element(element: DataElement | RawDataElement, implicit: bool, codec: str) -> bytes:
    if isinstance(element, RawDataElement):
        raise _Unsupported  # read from the wire: pydicom knows its encoding
    tag = int(element.tag)
    vr = element.VR or dictionary_VR(tag)
    if element.is_undefined_length and vr != "SQ":
        raise _Unsupported
    data = _value(element.value, vr, implicit, codec)
    group, number = tag >> 16, tag & 0xFFFF
    if implicit:
        return struct.pack("<HHI", group, number, len(data)) + data
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHI", group, number, vr.encode(), 0, len(data)) + data
    if len(data) > 0xFFFF:
        raise _Unsupported
    return struct.pack("<HH2sH", group, number, vr.encode(), len(data)) + data


def _dataset(ds: Dataset, implicit: bool, inherited: str) -> bytes:
    codec = _codec(ds, inherited)
    # elements(): in tag order, as stored (raw ones are not converted).
    return b"".join(_element(element, implicit, codec) for element in ds.elements())


def encode_little_endian(ds: Dataset, implicit: bool) -> bytes | None:
    """Return DS in Little Endian (implicit or explicit VR), or None for pydicom to write."""
    try:
        return _dataset(ds, implicit, "ascii")
    except (_Unsupported, UnicodeEncodeError, struct.error, TypeError, ValueError):
        return None


def fast_encode(original: Encoder) -> Encoder:
    """Wrap pynetdicom's ENCODE: little endian without deflate written here, the rest by it."""

    def encode(
        ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False
    ) -> bytes | None:
        if is_little_endian and not deflated:
            data = encode_little_endian(ds, is_implicit_vr)
            if data is not None:
                return data
        return original(ds, is_implicit_vr, is_little_endian, deflated)

    encode.wrapped = original  # type: ignore[attr-defined]
    return encode


def install() -> None:
    """Make pynetdicom's DIMSE messages and service classes encode through fast_encode."""
    for module in (dimse_messages, service_class):
        if not hasattr(module.encode, "wrapped"):
            module.encode = fast_encode(dsutils.encode)  # type: ignore[attr-defined]


# ---------------------------------------------------------------- DIMSE responses

# The responses an SCP sends by the hundred (one per match, per stored instance): their
# command sets are written here from the primitive, without building a pydicom Dataset.
_FAST_RESPONSES = {
    C_ECHO: "C_ECHO_RSP",
    C_STORE: "C_STORE_RSP",
    C_FIND: "C_FIND_RSP",
    C_GET: "C_GET_RSP",
    C_MOVE: "C_MOVE_RSP",
}
_COMMAND_FIELDS = {name: field for field, (name, _) in dimse_messages._MESSAGE_TYPES.items()}
_COMPUTED = frozenset({"CommandGroupLength", "CommandField", "CommandDataSetType"})
_NO_DATA_SET = 0x0101  # PS3.7 E.1-1, Command Data Set Type: no Data Set
_DATA_SET = 0x0001


def _command_layout(message: str) -> list[tuple[str, int, str]]:
    keywords = dimse_messages._COMMAND_SET_KEYWORDS[message.replace("_", "-")]
    return sorted(
        (
            (keyword, int(tag_for_keyword(keyword) or 0), dictionary_VR(keyword))
            for keyword in keywords
        ),
        key=lambda item: item[1],
    )


_LAYOUTS = {message: _command_layout(message) for message in _FAST_RESPONSES.values()}


def encode_response(primitive: Any) -> tuple[bytes, bytes] | None:
    """Return the command set and the data set bytes of a response PRIMITIVE, as pynetdicom
    encodes them, or None when it is not one written here."""
    message = _FAST_RESPONSES.get(type(primitive))
    if message is None or primitive.MessageIDBeingRespondedTo is None:
        return None
    keyword = dimse_messages._DATASET_KEYWORDS.get(message)
    data_set = getattr(primitive, keyword) if keyword else None
    body = []
    try:
        for name, tag, vr in _LAYOUTS[message]:
            if name == "CommandGroupLength":
                continue
            if name == "CommandField":
                value: Any = _COMMAND_FIELDS[message.replace("_", "-")]
            elif name == "CommandDataSetType":
                value = _DATA_SET if data_set else _NO_DATA_SET
            elif not hasattr(primitive, name):
                return None  # pynetdicom would keep its default: let it
            else:
                value = getattr(primitive, name)
                if value is None:
                    continue
            data = _value(value, vr, True, "ascii")
            body.append(struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(data)) + data)
    except (_Unsupported, UnicodeEncodeError, struct.error, TypeError, ValueError):
        return None
    rest = b"".join(body)
    command = struct.pack("<HHII", 0x0000, 0x0000, 4, len(rest)) + rest
    return command, data_set.getvalue() if data_set is not None else b""


def _fragments(stream: bytes, max_pdu: int) -> list[bytes]:
    if max_pdu == 0:
        return [stream]
    size = max_pdu - 6  # PS3.8 9.3.5.1: each PDV item adds 6 bytes
    return [stream[offset : offset + size] for offset in range(0, len(stream), size)] or [b""]


def p_data(context_id: int, command: bytes, data_set: bytes, max_pdu: int) -> list[P_DATA]:
    """Split one message into P-DATA primitives, as pynetdicom's encode_msg does (PS3.8 E.2)."""
    items = []
    pieces = _fragments(command, max_pdu)
    for index, piece in enumerate(pieces):
        items.append(b"\x03" + piece if index == len(pieces) - 1 else b"\x01" + piece)
    if data_set:
        pieces = _fragments(data_set, max_pdu)
        for index, piece in enumerate(pieces):
            items.append(b"\x02" + piece if index == len(pieces) - 1 else b"\x00" + piece)
    out = []
    for item in items:
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, item))
        out.append(pdata)
    return out


# ---------------------------------------------------------------- DIMSE requests

# The elements of the request command sets read here (PS3.7 9.1.1.1 C-STORE-RQ, 9.1.2.1
# C-FIND-RQ, 9.1.5.1 C-ECHO-RQ, 9.3.2.3 C-CANCEL-RQ): every other element sends the
# command set to pydicom.
_REQUEST_ELEMENTS: dict[int, tuple[str, str]] = {
    0x00000000: ("CommandGroupLength", "UL"),
    0x00000002: ("AffectedSOPClassUID", "UI"),
    0x00000100: ("CommandField", "US"),
    0x00000110: ("MessageID", "US"),
    0x00000120: ("MessageIDBeingRespondedTo", "US"),
    0x00000700: ("Priority", "US"),
    0x00000800: ("CommandDataSetType", "US"),
    0x00001000: ("AffectedSOPInstanceUID", "UI"),
    0x00001030: ("MoveOriginatorApplicationEntityTitle", "AE"),
    0x00001031: ("MoveOriginatorMessageID", "US"),
}
C_STORE_RQ_FIELD = 0x0001  # PS3.7 E.1-1, Command Field
C_FIND_RQ_FIELD = 0x0020
C_ECHO_RQ_FIELD = 0x0030
C_CANCEL_RQ_FIELD = 0x0FFF
_COMMON = frozenset({"CommandGroupLength", "CommandField", "CommandDataSetType"})
# Command Field: (the elements its command set may hold, whether a data set follows).
_REQUESTS: dict[int, tuple[frozenset[str], bool]] = {
    C_STORE_RQ_FIELD: (
        _COMMON
        | {
            "AffectedSOPClassUID",
            "MessageID",
            "Priority",
            "AffectedSOPInstanceUID",
            "MoveOriginatorApplicationEntityTitle",
            "MoveOriginatorMessageID",
        },
        True,
    ),
    C_FIND_RQ_FIELD: (_COMMON | {"AffectedSOPClassUID", "MessageID", "Priority"}, True),
    C_ECHO_RQ_FIELD: (_COMMON | {"AffectedSOPClassUID", "MessageID"}, False),
    C_CANCEL_RQ_FIELD: (_COMMON | {"MessageIDBeingRespondedTo"}, False),
}
_ELEMENT_HEADER = struct.Struct("<HHI")  # Implicit VR: tag, 4-byte length (PS3.5 7.1.3)
_US = struct.Struct("<H")
_UL = struct.Struct("<I")


def decode_request(data: bytes | bytearray | memoryview) -> dict[str, Any] | None:
    """The elements of a C-STORE-RQ, C-FIND-RQ, C-ECHO-RQ or C-CANCEL-RQ command set by
    keyword, valued as pydicom reads them (str for UI and AE, int for US and UL), or None for
    any other command set or anything unusual (an element its request does not have, an
    empty or multiple value, a byte beyond ASCII, tags out of order, a short element, a data
    set announced where none belongs or missing where one does), which pydicom then reads.

    Command sets are Implicit VR Little Endian (PS3.7 6.3.1).
    """
    view = memoryview(data)
    end = len(view)
    offset = 0
    previous = -1
    fields: dict[str, Any] = {}
    while offset < end:
        if offset + 8 > end:
            return None
        group, number, length = _ELEMENT_HEADER.unpack_from(view, offset)
        tag = group << 16 | number
        offset += 8
        known = _REQUEST_ELEMENTS.get(tag)
        if known is None or tag <= previous or length == 0 or offset + length > end:
            return None
        previous = tag
        keyword, vr = known
        raw = view[offset : offset + length]
        offset += length
        if vr == "US":
            if length != 2:
                return None
            fields[keyword] = _US.unpack(raw)[0]
        elif vr == "UL":
            if length != 4:
                return None
            fields[keyword] = _UL.unpack(raw)[0]
        else:
            text = bytes(raw)
            if b"\\" in text or not text.isascii():
                return None
            # pydicom: a UI loses its trailing nulls and spaces, an AE its outer spaces.
            fields[keyword] = (
                text.decode("ascii").rstrip("\0 ") if vr == "UI" else text.decode("ascii").strip()
            )
    request = _REQUESTS.get(fields.get("CommandField", -1))
    if request is None:
        return None
    keywords, with_data_set = request
    if "CommandDataSetType" not in fields or not fields.keys() <= keywords:
        return None
    if (fields["CommandDataSetType"] != _NO_DATA_SET) != with_data_set:
        return None
    return fields
