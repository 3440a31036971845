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

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName
from pynetdicom import dimse_messages, dsutils, service_class

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


def _value(element: DataElement, vr: str, implicit: bool, codec: str) -> bytes:
    value = element.value
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
    data = _value(element, vr, implicit, codec)
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
