"""STOW-RS (PS3.18 10.5): each part through the ingest service, and the response dataset.

Every instance is stored by `pacs.services.ingest_instance`, as a C-STORE is without the
intake journal: durable and indexed before it is listed as stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble

from pacs import services
from pacs.dicom_header import HeaderError, read_header
from pacs.dicomweb.multipart import MultipartError, Part

logger = logging.getLogger(__name__)

# FailureReason (0008,1197) values, PS3.18 Table 10.5.3-2 with the PS3.4 B.2.3 statuses.
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
# An instance of another study than the target URI's (PS3.18 10.5.1: refused). No status is
# standardised for it; "data set does not match" tells the client the part was at fault.
STUDY_INSTANCE_UID_MISMATCH = DATA_SET_DOES_NOT_MATCH_SOP_CLASS

_REASONS = {
    services.REASON_UNREADABLE: CANNOT_UNDERSTAND,
    services.REASON_SOP_CLASS_MISMATCH: DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    services.REASON_DUPLICATE: DUPLICATE_SOP_INSTANCE,
    services.REASON_OUT_OF_RESOURCES: OUT_OF_RESOURCES,
}

DICOM = "application/dicom"


@dataclass
class Outcome:
    """What happened to the parts of one STOW-RS request."""

    # SOP class, SOP instance, study and series UIDs
    stored: list[tuple[str, str, str, str]] = field(default_factory=list)
    # SOP class, SOP instance (empty when unreadable), FailureReason, why
    failed: list[tuple[str, str, int, str]] = field(default_factory=list)
    study_ids: set[int] = field(default_factory=set)
    body_error: str = ""  # the multipart body broke off after the parts listed


def _split_file(body: bytes) -> tuple[str, bytes]:
    """The transfer syntax and the encoded dataset of a DICOM file (PS3.10 7.1)."""
    stream = BytesIO(body)
    try:
        # PS3.10 wants the preamble; some writers (pydicom's dcmwrite) leave it out.
        read_preamble(stream, True)
        meta = _read_file_meta_info(stream)
    except (InvalidDicomError, EOFError, ValueError, KeyError) as exc:
        raise services.IngestError(services.REASON_UNREADABLE, "not a DICOM file") from exc
    syntax = meta.get("TransferSyntaxUID")
    if not syntax:
        raise services.IngestError(services.REASON_UNREADABLE, "no TransferSyntaxUID")
    return str(syntax), body[stream.tell() :]


def store_parts(
    parts: Iterator[Part], *, study_instance_uid: str | None, source_address: str
) -> Outcome:
    """Store every application/dicom part; a part that fails is listed, the others go on."""
    outcome = Outcome()
    cache = services.AssociationCache()
    try:
        for part in parts:
            _store_part(part, outcome, cache, study_instance_uid, source_address)
    except MultipartError as exc:
        # The parts before stay stored (durable, indexed): the response must say so.
        outcome.body_error = str(exc)
        outcome.failed.append(("", "", CANNOT_UNDERSTAND, f"bad multipart body: {exc}"))
    return outcome


def _store_part(
    part: Part,
    outcome: Outcome,
    cache: services.AssociationCache,
    study_instance_uid: str | None,
    source_address: str,
) -> None:
    """Store one part, or list why it was not."""
    if part.content_type.type != DICOM:
        outcome.failed.append(("", "", CANNOT_UNDERSTAND, f"{part.content_type.type} part"))
        return
    sop_class, sop_instance = "", ""
    try:
        syntax, encoded = _split_file(part.body)
        try:
            header = read_header(encoded, syntax)
        except HeaderError as exc:
            raise services.IngestError(services.REASON_UNREADABLE, str(exc)) from exc
        sop_class, sop_instance = header.sop_class_uid, header.sop_instance_uid
        if study_instance_uid and header.study_instance_uid != study_instance_uid:
            outcome.failed.append(
                (
                    sop_class,
                    sop_instance,
                    STUDY_INSTANCE_UID_MISMATCH,
                    "StudyInstanceUID is not the one of the target URI",
                )
            )
            return
        result = services.ingest_instance(
            encoded, transfer_syntax=syntax, source_address=source_address, cache=cache
        )
    except services.IngestError as exc:
        reason = _REASONS.get(exc.reason, PROCESSING_FAILURE)
        outcome.failed.append((sop_class, sop_instance, reason, exc.comment))
        return
    outcome.stored.append(
        (sop_class, sop_instance, header.study_instance_uid, header.series_instance_uid)
    )
    outcome.study_ids.add(result.study_id)


def response_dataset(
    outcome: Outcome, *, retrieve_url: Callable[..., str], study: str | None
) -> Dataset:
    """The Store Instances Response Module (PS3.18 Table 10.5.3-3) for OUTCOME."""
    response = Dataset()
    if study:
        response.RetrieveURL = retrieve_url(study)
    elif len({stored[2] for stored in outcome.stored}) == 1:
        response.RetrieveURL = retrieve_url(outcome.stored[0][2])
    if outcome.failed:
        response.FailedSOPSequence = []
        for sop_class, sop_instance, reason, _why in outcome.failed:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            item.FailureReason = reason
            response.FailedSOPSequence.append(item)
    if outcome.stored:
        response.ReferencedSOPSequence = []
        for sop_class, sop_instance, study_uid, series_uid in outcome.stored:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            item.RetrieveURL = retrieve_url(study_uid, series_uid, sop_instance)
            response.ReferencedSOPSequence.append(item)
    return response
