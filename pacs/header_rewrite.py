"""Rewrite a study's stored headers to its index copies, keeping what was received.

The values replaced go into an OriginalAttributesSequence item (PS3.3 C.12.1) with
ModifiedAttributesSequence, AttributeModificationDateTime, ModifyingSystem and
ReasonForTheAttributeModification. Each file is replaced atomically (FileStorage.write
with replace: temporary file, fsync, rename, folder fsync); the index's file sizes follow.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from io import BytesIO

import pydicom
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence

from pacs.models import HeaderRewrite, Instance, Study
from pacs.storage import FileStorage, default_storage

logger = logging.getLogger(__name__)

MODIFYING_SYSTEM = "RISPACS"
SWEEP_BATCH = 100


@dataclass
class RewriteResult:
    rewritten: int = 0
    unchanged: int = 0
    failed: int = 0


def target_values(study: Study) -> dict[str, str]:
    """The identity attributes the stored headers are to carry, as DICOM strings."""
    return {
        "PatientName": study.patient_name,
        "PatientID": study.dicom_patient_id,
        "IssuerOfPatientID": study.issuer_of_patient_id,
        "PatientBirthDate": (
            study.patient_birth_date.strftime("%Y%m%d") if study.patient_birth_date else ""
        ),
        "PatientSex": study.patient_sex,
        "AccessionNumber": study.accession_number,
    }


def _current(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value)


def rewrite_dataset(ds: Dataset, values: dict[str, str], reason: str) -> bool:
    """Set VALUES in DS, recording the replaced ones; return whether anything changed."""
    changed = {
        keyword: value for keyword, value in values.items() if _current(ds, keyword) != value
    }
    # Leave an empty value absent rather than adding an empty element for nothing.
    changed = {k: v for k, v in changed.items() if v or k in ds}
    if not changed:
        return False
    modified = Dataset()
    for keyword in changed:
        if keyword in ds:
            modified[keyword] = copy.deepcopy(ds[keyword])  # ds's own is changed below
        else:
            setattr(modified, keyword, "")  # it was absent: recorded as empty
    needs_utf8 = any(not value.isascii() for value in changed.values())
    charset = ds.get("SpecificCharacterSet")
    if needs_utf8 and charset != "ISO_IR 192":
        modified.SpecificCharacterSet = charset if charset else ""
        ds.SpecificCharacterSet = "ISO_IR 192"
    item = Dataset()
    item.ModifiedAttributesSequence = Sequence([modified])
    item.AttributeModificationDateTime = timezone.now().strftime("%Y%m%d%H%M%S.%f+0000")
    item.ModifyingSystem = MODIFYING_SYSTEM
    item.SourceOfPreviousValues = ""
    item.ReasonForTheAttributeModification = reason
    originals = ds.get("OriginalAttributesSequence")
    if originals is None:
        ds.OriginalAttributesSequence = Sequence([item])
    else:
        originals.append(item)
    for keyword, value in changed.items():
        setattr(ds, keyword, value)
    return True


def rewrite_file(
    storage: FileStorage, relative_path: str, values: dict[str, str], reason: str
) -> int | None:
    """Rewrite one stored file; return its new size, or None when it already held VALUES."""
    with storage.open(relative_path) as handle:
        ds = pydicom.dcmread(handle)
    if not rewrite_dataset(ds, values, reason):
        return None
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return storage.write(relative_path, [buffer.getvalue()], replace=True)


def rewrite_study_headers(
    study_id: int, *, reason: str | None = None, storage: FileStorage | None = None
) -> RewriteResult:
    """Bring every stored file of STUDY_ID in line with its index copies; drop its pending row."""
    storage = storage or default_storage()
    result = RewriteResult()
    study = Study.objects.filter(pk=study_id).first()
    if study is None:
        return result  # deleted meanwhile
    pending = HeaderRewrite.objects.filter(study_id=study_id).first()
    reason = reason or (pending.reason if pending else "CORRECT")
    requested_at = pending.requested_at if pending else None
    values = target_values(study)
    instances = Instance.objects.filter(series__study_id=study_id).values_list(
        "pk", "file_path", "file_size"
    )
    for instance_id, path, old_size in instances.iterator():
        try:
            size = rewrite_file(storage, path, values, reason)
        except (OSError, ValueError, InvalidDicomError):
            logger.exception("cannot rewrite the header of %s", path)
            result.failed += 1
            continue
        if size is None:
            result.unchanged += 1
            continue
        result.rewritten += 1
        with transaction.atomic():
            Instance.objects.filter(pk=instance_id).update(file_size=size)
            Study.objects.filter(pk=study_id).update(size_bytes=F("size_bytes") + size - old_size)
    if not result.failed and requested_at is not None:
        # A request made while this ran (new values) stays for the next run.
        HeaderRewrite.objects.filter(study_id=study_id, requested_at=requested_at).delete()
    return result


def due_rewrites() -> list[int]:
    """Study ids whose header rewrite is due."""
    return list(
        HeaderRewrite.objects.filter(due_at__lte=timezone.now())
        .order_by("due_at")
        .values_list("study_id", flat=True)[:SWEEP_BATCH]
    )
