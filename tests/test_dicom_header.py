"""The direct header reader gives what pydicom gives, and file meta bytes match pydicom's."""

from __future__ import annotations

import glob
import struct
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from pacs import dicom_header
from pacs.dicom_header import HeaderError, _header_of, parse_dataset, read_header
from pacs.services import IMPLEMENTATION_VERSION_NAME, file_meta_bytes
from tests.dicom_factory import ct_instance

DATA = Path(pydicom.__file__).parent / "data"
SAMPLES = sorted(
    glob.glob(str(DATA / "test_files" / "*.dcm")) + glob.glob(str(DATA / "charset_files" / "*.dcm"))
)


def _encode(ds: Dataset, syntax: str) -> bytes:
    """DS encoded in SYNTAX, without file meta (as C-STORE carries it)."""
    buffer = DicomBytesIO()
    buffer.is_little_endian = UID(syntax).is_little_endian
    buffer.is_implicit_VR = UID(syntax).is_implicit_VR
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _encoded(path: str) -> tuple[bytes, str] | None:
    try:
        ds = pydicom.dcmread(path, force=True)
        syntax = ds.file_meta.TransferSyntaxUID
    except Exception:
        return None
    if syntax not in (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian):
        syntax = ExplicitVRLittleEndian if not syntax.is_implicit_VR else ImplicitVRLittleEndian
    try:
        return _encode(ds, syntax), str(syntax)
    except Exception:
        return None


def _by_pydicom(encoded: bytes, syntax: str) -> object:
    try:
        return _header_of(parse_dataset(encoded, syntax))
    except Exception as exc:
        return type(exc)


def _by_reader(encoded: bytes, syntax: str) -> object:
    try:
        return read_header(encoded, syntax)
    except Exception as exc:
        return type(exc)


def test_samples_cover_both_readers() -> None:
    read_directly = 0
    for path in SAMPLES:
        sample = _encoded(path)
        if sample is None or not UID(sample[1]).is_little_endian:
            continue
        if dicom_header._scan(sample[0], UID(sample[1]).is_implicit_VR) is not None:
            read_directly += 1
    assert len(SAMPLES) > 50
    assert read_directly > 30  # most files take the direct path; the rest still compare


@pytest.mark.parametrize("path", SAMPLES, ids=lambda path: Path(path).name)
def test_direct_reader_agrees_with_pydicom(path: str) -> None:
    sample = _encoded(path)
    if sample is None:
        pytest.skip("pydicom cannot re-encode this file")
    encoded, syntax = sample
    assert _by_reader(encoded, syntax) == _by_pydicom(encoded, syntax)


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
@pytest.mark.parametrize(
    ("name", "charset"),
    [("Müller^Jürgen", "ISO_IR 100"), ("Ærø^Åse", "ISO_IR 192"), ("Doe^Jane", None)],
)
def test_direct_reader_reads_names_and_numbers(syntax: str, name: str, charset: str | None) -> None:
    ds = ct_instance(patient_name=name, charset=charset, transfer_syntax=syntax)
    ds.SeriesNumber, ds.InstanceNumber = " 3", "12 "
    encoded = _encode(ds, syntax)
    assert dicom_header._scan(encoded, syntax == ImplicitVRLittleEndian) is not None
    header = read_header(encoded, syntax)
    assert header == _by_pydicom(encoded, syntax)
    assert (header.patient_name, header.series_number, header.instance_number) == (name, 3, 12)
    assert header.rows == ds.Rows and header.bits_allocated == ds.BitsAllocated


def test_unusual_values_go_to_pydicom() -> None:
    ds = ct_instance(patient_name="Doe^Jane")
    ds.InstanceNumber = "1.0"  # IS with a decimal point: pydicom's reading decides
    ds.Modality = ["CT", "PT"]  # several values
    encoded = _encode(ds, ExplicitVRLittleEndian)
    assert dicom_header._scan(encoded, False) is None
    assert read_header(encoded, ExplicitVRLittleEndian) == _by_pydicom(
        encoded, ExplicitVRLittleEndian
    )


def test_missing_uid_and_truncation_are_header_errors() -> None:
    ds = ct_instance(patient_name="Doe^Jane")
    del ds.SeriesInstanceUID
    with pytest.raises(HeaderError, match="SeriesInstanceUID is missing"):
        read_header(_encode(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian)
    complete = ct_instance(patient_name="Doe^Jane")
    with pytest.raises(HeaderError):
        read_header(_encode(complete, ExplicitVRLittleEndian)[:100], ExplicitVRLittleEndian)


@pytest.mark.parametrize("calling_ae", ["STORESCU", "CT1", ""])
def test_file_meta_bytes_match_pydicom(calling_ae: str) -> None:
    ds = ct_instance(patient_name="Doe^Jane")
    header = read_header(_encode(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = header.sop_class_uid
    meta.MediaStorageSOPInstanceUID = header.sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if calling_ae:
        meta.SourceApplicationEntityTitle = calling_ae
    expected = BytesIO()
    expected.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(expected, meta, enforce_standard=True)  # type: ignore[arg-type]
    assert file_meta_bytes(header, ExplicitVRLittleEndian, calling_ae) == expected.getvalue()


def test_sequences_nested_past_reason_are_a_header_error() -> None:
    ds = ct_instance(patient_name="Doe^Jane")
    head = _encode(ds, ImplicitVRLittleEndian)
    sequence = struct.pack("<HHI", 0x0008, 0x1140, 0xFFFFFFFF)  # undefined length
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    nested = (sequence + item) * 5000  # never closed either
    assert dicom_header._scan(nested + head, True) is None
    with pytest.raises(HeaderError):
        read_header(nested + head, ImplicitVRLittleEndian)
