"""Read what the archive indexes from an encoded dataset, once, without touching pixel data.

Plain module: no Django. The ingest service turns an InstanceHeader into index rows.
"""

from __future__ import annotations

import datetime as dt
import struct
import zlib
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

# The index needs nothing past group 0040; stopping there skips pixel data, encapsulated
# documents and large private blocks without reading them.
_LAST_GROUP_READ = 0x0040


class Values(Protocol):
    """What the header is read from: a pydicom Dataset, or the direct reader's values."""

    def get(self, keyword: str, /) -> Any: ...


class HeaderError(ValueError):
    """The dataset cannot be indexed; the message is fit for a DIMSE ErrorComment."""


@dataclass(frozen=True)
class InstanceHeader:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    specific_character_set: str
    patient_name: str
    patient_id: str
    issuer_of_patient_id: str
    patient_birth_date: dt.date | None
    patient_sex: str
    study_date: dt.date | None
    study_time: str
    accession_number: str
    study_id: str
    study_description: str
    referring_physician_name: str
    modality: str
    series_number: int | None
    series_description: str
    body_part_examined: str
    series_date: dt.date | None
    series_time: str
    station_name: str
    institution_name: str
    instance_number: int | None
    number_of_frames: int | None
    rows: int | None
    columns: int | None
    bits_allocated: int | None


def _stop(tag: BaseTag, vr: str | None, length: int) -> bool:
    return bool(tag.group > _LAST_GROUP_READ)


def parse_dataset(encoded: bytes, transfer_syntax: str) -> Dataset:
    """Decode the elements up to group 0040 of ENCODED (a dataset without file meta)."""
    syntax = UID(transfer_syntax)
    if syntax == DeflatedExplicitVRLittleEndian:
        try:
            encoded = zlib.decompress(encoded, -zlib.MAX_WBITS)
        except zlib.error as exc:
            raise HeaderError(f"deflated dataset cannot be inflated: {exc}") from exc
    try:
        return read_dataset(
            BytesIO(encoded), syntax.is_implicit_VR, syntax.is_little_endian, stop_when=_stop
        )
    except Exception as exc:  # pydicom raises many types on malformed input
        raise HeaderError(f"dataset cannot be parsed: {type(exc).__name__}: {exc}") from exc


def _text(ds: Values, keyword: str, limit: int = 0) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        text = "\\".join(str(item) for item in value)
    else:
        text = str(value)
    text = text.strip().rstrip("\x00")
    return text[:limit] if limit else text


def _date(ds: Values, keyword: str) -> dt.date | None:
    text = _text(ds, keyword)
    if not text:
        return None
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date()  # noqa: DTZ007  (a date, no time)
    except ValueError:
        return None  # a malformed date is kept in the file, not indexed


def _int(ds: Values, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if -(2**31) <= number < 2**31 else None


def _uid(ds: Values, keyword: str) -> str:
    value = _text(ds, keyword)
    if not value:
        raise HeaderError(f"{keyword} is missing")
    if len(value) > 64 or not all(part.isdigit() for part in value.split(".")):
        raise HeaderError(f"{keyword} is not a valid UID: {value[:70]!r}")
    return value


def read_header(encoded: bytes, transfer_syntax: str) -> InstanceHeader:
    """Parse ENCODED once and return what the index needs; raise HeaderError if it cannot.

    Little endian datasets in the usual character sets are read by `_scan`, which decodes
    only the elements the index needs; anything else (big endian, deflate, code
    extensions, a multi-valued or unusual value) goes through pydicom, which gives the
    same header for what both read (tests/test_dicom_header.py compares them).
    """
    syntax = UID(transfer_syntax)
    if syntax.is_little_endian and syntax != DeflatedExplicitVRLittleEndian:
        values = _scan(encoded, syntax.is_implicit_VR)
        if values is not None:
            try:
                return _header_of(values)
            except HeaderError:
                raise
            except Exception:  # noqa: S110  (pydicom below says what is wrong)
                pass
    ds = parse_dataset(encoded, transfer_syntax)
    try:
        return _header_of(ds)
    except HeaderError:
        raise
    except Exception as exc:  # decoding a value (e.g. a bad character set) may fail late
        raise HeaderError(f"dataset cannot be decoded: {type(exc).__name__}: {exc}") from exc


# -- the direct reader -------------------------------------------------------------------

# The elements the index reads: tag -> (keyword, VR). An element found with another VR
# (explicit VR), or a value this reader does not decode, sends the dataset to pydicom.
_WANTED: dict[int, tuple[str, str]] = {
    0x00080005: ("SpecificCharacterSet", "CS"),
    0x00080016: ("SOPClassUID", "UI"),
    0x00080018: ("SOPInstanceUID", "UI"),
    0x00080020: ("StudyDate", "DA"),
    0x00080021: ("SeriesDate", "DA"),
    0x00080030: ("StudyTime", "TM"),
    0x00080031: ("SeriesTime", "TM"),
    0x00080050: ("AccessionNumber", "SH"),
    0x00080060: ("Modality", "CS"),
    0x00080080: ("InstitutionName", "LO"),
    0x00080090: ("ReferringPhysicianName", "PN"),
    0x00081010: ("StationName", "SH"),
    0x00081030: ("StudyDescription", "LO"),
    0x0008103E: ("SeriesDescription", "LO"),
    0x00100010: ("PatientName", "PN"),
    0x00100020: ("PatientID", "LO"),
    0x00100021: ("IssuerOfPatientID", "LO"),
    0x00100030: ("PatientBirthDate", "DA"),
    0x00100040: ("PatientSex", "CS"),
    0x00180015: ("BodyPartExamined", "CS"),
    0x0020000D: ("StudyInstanceUID", "UI"),
    0x0020000E: ("SeriesInstanceUID", "UI"),
    0x00200010: ("StudyID", "SH"),
    0x00200011: ("SeriesNumber", "IS"),
    0x00200013: ("InstanceNumber", "IS"),
    0x00280008: ("NumberOfFrames", "IS"),
    0x00280010: ("Rows", "US"),
    0x00280011: ("Columns", "US"),
    0x00280100: ("BitsAllocated", "US"),
}
# PS3.5 7.1.2: explicit VRs with a 2-byte reserved field and a 4-byte length.
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
)
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
# Character sets read here: each value's bytes decode on their own (no code extensions).
# Text VRs follow the character set; the others are read as pydicom reads them.
_TEXT_CODECS = {"": "latin_1", "ISO_IR 6": "latin_1", "ISO_IR 100": "latin_1"}
_TEXT_CODECS["ISO_IR 192"] = "utf_8"
_CHARSET_VRS = frozenset({"LO", "PN", "SH"})
_HEAD = struct.Struct("<HHI")  # tag and 4-byte length (implicit VR, items)
_HEAD_EXPLICIT = struct.Struct("<HH2sH")  # tag, VR and 2-byte length
_LENGTH = struct.Struct("<I")
_US = struct.Struct("<H")


class _Unread(Exception):
    """The direct reader leaves this dataset to pydicom."""


def _scan(encoded: bytes, implicit: bool) -> dict[str, str | int] | None:
    """The index's elements of a little endian dataset, or None to use pydicom."""
    try:
        raw = _raw_elements(encoded, implicit)
        charset = raw.pop("SpecificCharacterSet", (b"", "CS"))[0].decode("ascii").strip(" \0")
        codec = _TEXT_CODECS.get(charset)
        if codec is None:
            return None  # several or code-extended character sets: pydicom's decoder
        values: dict[str, str | int] = {"SpecificCharacterSet": charset}
        for keyword, (data, vr) in raw.items():
            values[keyword] = _decode(data, vr, codec)
        return values
    except (_Unread, struct.error, UnicodeDecodeError, ValueError, IndexError, RecursionError):
        return None  # RecursionError: sequences nested past reason, pydicom words it


def _raw_elements(encoded: bytes, implicit: bool) -> dict[str, tuple[bytes, str]]:
    found: dict[str, tuple[bytes, str]] = {}
    offset, end = 0, len(encoded)
    while offset < end:
        group, number, length = _HEAD.unpack_from(encoded, offset)
        if group > _LAST_GROUP_READ:
            break
        tag = group << 16 | number
        if implicit:
            vr = _WANTED[tag][1] if tag in _WANTED else ""
            offset += 8
        else:
            group, number, vr_bytes, length = _HEAD_EXPLICIT.unpack_from(encoded, offset)
            if vr_bytes in _LONG_VRS:
                (length,) = _LENGTH.unpack_from(encoded, offset + 8)
                offset += 12
            else:
                offset += 8
            vr = vr_bytes.decode("ascii")
        if length == _UNDEFINED:
            offset = _skip_undefined(encoded, offset, implicit)
            continue
        if offset + length > end:
            raise _Unread  # truncated: pydicom words the error
        wanted = _WANTED.get(tag)
        if wanted is not None:
            if vr != wanted[1]:
                raise _Unread
            found[wanted[0]] = (encoded[offset : offset + length], vr)
        offset += length
    return found


def _skip_undefined(encoded: bytes, offset: int, implicit: bool) -> int:
    """The offset after a sequence of undefined length whose items start at OFFSET."""
    while True:
        group, number, length = _HEAD.unpack_from(encoded, offset)
        tag = group << 16 | number
        offset += 8
        if tag == _SEQUENCE_END:
            return offset
        if tag != _ITEM:
            raise _Unread
        if length != _UNDEFINED:
            offset += length
            continue
        offset = _skip_item(encoded, offset, implicit)


def _skip_item(encoded: bytes, offset: int, implicit: bool) -> int:
    """The offset after an item of undefined length whose elements start at OFFSET."""
    while True:
        group, number, length = _HEAD.unpack_from(encoded, offset)
        if (group << 16 | number) == _ITEM_END:
            return offset + 8
        if implicit:
            offset += 8
        else:
            vr_bytes = encoded[offset + 4 : offset + 6]
            if vr_bytes in _LONG_VRS:
                (length,) = _LENGTH.unpack_from(encoded, offset + 8)
                offset += 12
            else:
                length = _US.unpack_from(encoded, offset + 6)[0]
                offset += 8
        if length == _UNDEFINED:
            offset = _skip_undefined(encoded, offset, implicit)
        else:
            offset += length
        if offset > len(encoded):
            raise _Unread


def _decode(data: bytes, vr: str, codec: str) -> str | int:
    if vr == "US":
        if len(data) != 2:
            raise _Unread
        return int(_US.unpack(data)[0])
    text = data.decode(codec if vr in _CHARSET_VRS else "latin_1").rstrip("\0 ")
    if "\\" in text or (vr == "PN" and "=" in text):
        raise _Unread  # several values, or name groups: pydicom splits them
    if vr == "IS" and text.strip():
        return int(text)  # anything but a plain integer: pydicom's reading
    return text


def _header_of(ds: Values) -> InstanceHeader:
    return InstanceHeader(
        sop_class_uid=_uid(ds, "SOPClassUID"),
        sop_instance_uid=_uid(ds, "SOPInstanceUID"),
        study_instance_uid=_uid(ds, "StudyInstanceUID"),
        series_instance_uid=_uid(ds, "SeriesInstanceUID"),
        specific_character_set=_text(ds, "SpecificCharacterSet", 128),
        patient_name=_text(ds, "PatientName", 324),
        patient_id=_text(ds, "PatientID", 64),
        issuer_of_patient_id=_text(ds, "IssuerOfPatientID", 64),
        patient_birth_date=_date(ds, "PatientBirthDate"),
        patient_sex=_text(ds, "PatientSex", 16),
        study_date=_date(ds, "StudyDate"),
        study_time=_text(ds, "StudyTime", 16),
        accession_number=_text(ds, "AccessionNumber", 16),
        study_id=_text(ds, "StudyID", 16),
        study_description=_text(ds, "StudyDescription", 64),
        referring_physician_name=_text(ds, "ReferringPhysicianName", 324),
        modality=_text(ds, "Modality", 16),
        series_number=_int(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription", 64),
        body_part_examined=_text(ds, "BodyPartExamined", 16),
        series_date=_date(ds, "SeriesDate"),
        series_time=_text(ds, "SeriesTime", 16),
        station_name=_text(ds, "StationName", 16),
        institution_name=_text(ds, "InstitutionName", 64),
        instance_number=_int(ds, "InstanceNumber"),
        number_of_frames=_int(ds, "NumberOfFrames"),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        bits_allocated=_int(ds, "BitsAllocated"),
    )
