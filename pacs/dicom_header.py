"""Read what the archive indexes from an encoded dataset, once, without touching pixel data.

Plain module: no Django. The ingest service turns an InstanceHeader into index rows.
"""

from __future__ import annotations

import datetime as dt
import zlib
from dataclasses import dataclass
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

# The index needs nothing past group 0040; stopping there skips pixel data, encapsulated
# documents and large private blocks without reading them.
_LAST_GROUP_READ = 0x0040


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


def _text(ds: Dataset, keyword: str, limit: int = 0) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        text = "\\".join(str(item) for item in value)
    else:
        text = str(value)
    text = text.strip().rstrip("\x00")
    return text[:limit] if limit else text


def _date(ds: Dataset, keyword: str) -> dt.date | None:
    text = _text(ds, keyword)
    if not text:
        return None
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date()  # noqa: DTZ007  (a date, no time)
    except ValueError:
        return None  # a malformed date is kept in the file, not indexed


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if -(2**31) <= number < 2**31 else None


def _uid(ds: Dataset, keyword: str) -> str:
    value = _text(ds, keyword)
    if not value:
        raise HeaderError(f"{keyword} is missing")
    if len(value) > 64 or not all(part.isdigit() for part in value.split(".")):
        raise HeaderError(f"{keyword} is not a valid UID: {value[:70]!r}")
    return value


def read_header(encoded: bytes, transfer_syntax: str) -> InstanceHeader:
    """Parse ENCODED once and return what the index needs; raise HeaderError if it cannot."""
    ds = parse_dataset(encoded, transfer_syntax)
    try:
        return _header_of(ds)
    except HeaderError:
        raise
    except Exception as exc:  # decoding a value (e.g. a bad character set) may fail late
        raise HeaderError(f"dataset cannot be decoded: {type(exc).__name__}: {exc}") from exc


def _header_of(ds: Dataset) -> InstanceHeader:
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
