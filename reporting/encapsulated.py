"""The report PDF as a DICOM Encapsulated PDF instance (PS3.3 A.45.1), stored with the images.

No Django here: `reporting.distribution` gathers the study's stored attributes into an
`EncapsulatedReport`. UIDs are derived from the report's id and version (UUID-based,
PS3.5 B.2), so building the same version twice gives the same SOP Instance UID and the
archive keeps one instance however often the task runs.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import UID, ExplicitVRLittleEndian

ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"
TRANSFER_SYNTAX = ExplicitVRLittleEndian
MIME_TYPE_PDF = "application/pdf"
MODALITY = "DOC"
SERIES_DESCRIPTION = "Report"
# One series per report, numbered high so viewers list it after the images.
SERIES_NUMBER = 9001
DOCUMENT_TITLE = "Radiology report"
# PS3.16 CID 7020 (document titles): LOINC 18748-4.
CONCEPT_CODE = ("18748-4", "LN", "Diagnostic imaging study")
# PS3.3 C.24.2: who attests to the content.
VERIFIED = "VERIFIED"
UNVERIFIED = "UNVERIFIED"
# PS3.3 C.8.6.1: the document was made on a workstation, not digitised from paper.
CONVERSION_TYPE_WORKSTATION = "WSD"
UTF8_CHARACTER_SET = "ISO_IR 192"
MANUFACTURER = "RISPACS"

# Fixed namespace of this system's derived UIDs: the same name gives the same UID everywhere.
_UID_NAMESPACE = uuid.UUID("5d0b1c52-7a43-4bd8-9e63-9c3c7a1d2f10")


def derived_uid(name: str) -> str:
    """Return the UUID-derived UID (2.25.<uuid as integer>) for NAME, always the same."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


def series_uid(report_id: int) -> str:
    """Return the Series Instance UID of REPORT_ID's document series."""
    return derived_uid(f"rispacs:report:{report_id}:series")


def instance_uid(report_id: int, version: str) -> str:
    """Return the SOP Instance UID of VERSION of REPORT_ID."""
    return derived_uid(f"rispacs:report:{report_id}:version:{version}")


@dataclass(frozen=True)
class EncapsulatedReport:
    """One report version's instance: the PDF, with patient and study as the archive has them."""

    report_id: int
    version: str
    pdf: bytes
    verified: bool
    content_at: dt.datetime  # when it was signed, in the department's time zone
    study_instance_uid: str
    patient_name: str
    patient_id: str
    issuer_of_patient_id: str = ""
    patient_birth_date: dt.date | None = None
    patient_sex: str = ""
    study_date: dt.date | None = None
    study_time: str = ""
    study_id: str = ""
    accession_number: str = ""
    study_description: str = ""
    referring_physician_name: str = ""
    instance_number: int = 1
    institution_name: str = ""
    document_title: str = DOCUMENT_TITLE


def _da(value: dt.date | None) -> str:
    return value.strftime("%Y%m%d") if value else ""


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _is_ascii(*values: str) -> bool:
    return all(value.isascii() for value in values)


def build_dataset(report: EncapsulatedReport) -> Dataset:
    """Return the Encapsulated PDF dataset of REPORT, file meta included."""
    ds = Dataset()
    texts = (
        report.patient_name,
        report.referring_physician_name,
        report.study_description,
        report.institution_name,
        report.document_title,
        report.issuer_of_patient_id,
    )
    if not _is_ascii(*texts):
        ds.SpecificCharacterSet = UTF8_CHARACTER_SET  # PS3.3 C.12.1.1.2
    # SOP Common
    ds.SOPClassUID = UID(ENCAPSULATED_PDF_STORAGE)
    ds.SOPInstanceUID = UID(instance_uid(report.report_id, report.version))
    ds.InstanceCreationDate = report.content_at.strftime("%Y%m%d")
    ds.InstanceCreationTime = report.content_at.strftime("%H%M%S")
    ds.TimezoneOffsetFromUTC = report.content_at.strftime("%z") or "+0000"
    # Patient: as the archive holds it for the study, so C-FIND finds it with the images.
    ds.PatientName = report.patient_name
    ds.PatientID = report.patient_id
    if report.issuer_of_patient_id:
        ds.IssuerOfPatientID = report.issuer_of_patient_id
    ds.PatientBirthDate = _da(report.patient_birth_date)
    ds.PatientSex = report.patient_sex
    # General Study
    ds.StudyInstanceUID = UID(report.study_instance_uid)
    ds.StudyDate = _da(report.study_date)
    ds.StudyTime = report.study_time
    ds.ReferringPhysicianName = report.referring_physician_name
    ds.StudyID = report.study_id
    ds.AccessionNumber = report.accession_number
    if report.study_description:
        ds.StudyDescription = report.study_description
    # Encapsulated Document Series
    ds.Modality = MODALITY
    ds.SeriesInstanceUID = UID(series_uid(report.report_id))
    ds.SeriesNumber = SERIES_NUMBER
    ds.SeriesDescription = SERIES_DESCRIPTION
    # General Equipment, SC Equipment
    ds.Manufacturer = MANUFACTURER
    if report.institution_name:
        ds.InstitutionName = report.institution_name[:64]
    ds.ConversionType = CONVERSION_TYPE_WORKSTATION
    # Encapsulated Document (PS3.3 C.24.2)
    ds.InstanceNumber = report.instance_number
    ds.ContentDate = report.content_at.strftime("%Y%m%d")
    ds.ContentTime = report.content_at.strftime("%H%M%S")
    ds.AcquisitionDateTime = report.content_at.strftime("%Y%m%d%H%M%S%z")
    ds.BurnedInAnnotation = "YES"  # the PDF names the patient
    ds.DocumentTitle = report.document_title
    ds.ConceptNameCodeSequence = [_code(*CONCEPT_CODE)]
    ds.VerificationFlag = VERIFIED if report.verified else UNVERIFIED
    ds.MIMETypeOfEncapsulatedDocument = MIME_TYPE_PDF
    ds.EncapsulatedDocumentLength = len(report.pdf)
    # OB must have an even length; the padding byte is not part of the document
    # (EncapsulatedDocumentLength says where it ends, PS3.3 C.24.2.1).
    ds.EncapsulatedDocument = report.pdf + (b"\x00" if len(report.pdf) % 2 else b"")

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = UID(TRANSFER_SYNTAX)
    return ds


def encode(ds: Dataset) -> bytes:
    """Return DS encoded as C-STORE carries it: Explicit VR Little Endian, no file meta."""
    buffer = DicomBytesIO()
    buffer.is_implicit_VR = False
    buffer.is_little_endian = True
    write_dataset(buffer, ds)
    return buffer.getvalue()
