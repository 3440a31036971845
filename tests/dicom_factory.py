"""Synthetic DICOM instances for tests: made-up patients, small images, real encodings."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root for examples and tests


def uid() -> str:
    return str(generate_uid(prefix=ROOT))


def ct_instance(
    *,
    patient_name: str = "Testperson^Alex",
    patient_id: str = "TP0001",
    issuer: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    accession: str = "ACC0001",
    study_date: str = "20260115",
    study_time: str = "101500",
    modality: str = "CT",
    number: int = 1,
    size: int = 32,
    sop_class: str = CTImageStorage,
    charset: str | None = None,
    referring: str = "Sample^Casey^^Dr",
    study_description: str = "CT HEAD",
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Dataset:
    """A small 16-bit CT image with the identifiers given, ready to send or save."""
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid or uid()
    ds.StudyInstanceUID = study_uid or uid()
    ds.SeriesInstanceUID = series_uid or uid()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.AccessionNumber = accession
    ds.ReferringPhysicianName = referring
    ds.StudyDescription = study_description
    ds.StudyID = "1"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.SeriesDescription = "Axial"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows = size
    ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    rng = np.random.default_rng(number)
    ds.PixelData = rng.integers(0, 4095, size=(size, size), dtype=np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def series(count: int, **fields: object) -> list[Dataset]:
    """COUNT instances of one series of one study."""
    study_uid, series_uid = (
        fields.pop("study_uid", None) or uid(),
        fields.pop("series_uid", None) or uid(),
    )
    return [
        ct_instance(study_uid=study_uid, series_uid=series_uid, number=n + 1, **fields)  # type: ignore[arg-type]
        for n in range(count)
    ]


def save(ds: Dataset, folder: Path) -> Path:
    """Write DS as a DICOM file (Part 10) in FOLDER; return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def encoded(ds: Dataset) -> bytes:
    """The dataset as a C-STORE carries it: encoded in its transfer syntax, no file meta."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    syntax = UID(ds.file_meta.TransferSyntaxUID)
    buffer = DicomBytesIO()
    buffer.is_implicit_VR = syntax.is_implicit_VR
    buffer.is_little_endian = syntax.is_little_endian
    write_dataset(buffer, ds)
    return buffer.getvalue()


def today() -> str:
    return dt.date.today().strftime("%Y%m%d")  # noqa: DTZ011


__all__ = ["ImplicitVRLittleEndian", "ct_instance", "encoded", "save", "series", "uid"]
