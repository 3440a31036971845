"""DIMSE services of the worklist: Modality Worklist C-FIND and MPPS N-CREATE/N-SET as SCP.

Each function named in settings.DICOM_SERVICES adds its SOP class to the one AE and
returns its handlers. Handlers are thin: decode, call a selector or service, answer
with a named status.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import evt
from pynetdicom.ae import ApplicationEntity
from pynetdicom.dimse_primitives import N_CREATE, N_SET
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # made at import
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
)

from core import audit
from core.dicom_server import calling, status_dataset, usable_database
from worklist import selectors, services
from worklist.selectors import InvalidQuery

logger = logging.getLogger(__name__)

EventHandler = tuple[Any, ...]
Status = int | Dataset

# PS3.4 K.4.1.1.4, Table K.4-1: C-FIND statuses of the Basic Worklist Management Service.
STATUS_SUCCESS = 0x0000
STATUS_PENDING = 0xFF00
STATUS_PENDING_OPTIONAL_KEYS_NOT_SUPPORTED = 0xFF01
STATUS_CANCEL = 0xFE00
STATUS_IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
STATUS_UNABLE_TO_PROCESS = 0xC000

# PS3.7 Annex C and PS3.4 F.7.2: N-CREATE and N-SET statuses of the MPPS SOP Class.
STATUS_INVALID_ATTRIBUTE_VALUE = 0x0106  # PS3.7 C.5.4
STATUS_PROCESSING_FAILURE = 0x0110  # PS3.7 C.5.5; PS3.4 Table F.7.2-2
STATUS_DUPLICATE_SOP_INSTANCE = 0x0111  # PS3.7 C.5.7
STATUS_NO_SUCH_OBJECT_INSTANCE = 0x0112  # PS3.7 C.5.9
STATUS_ATTRIBUTE_VALUE_OUT_OF_RANGE = 0x0116  # PS3.7 C.4.4: a warning, the change is made
STATUS_MISSING_ATTRIBUTE = 0x0120  # PS3.7 C.5.14
STATUS_MISSING_ATTRIBUTE_VALUE = 0x0121  # PS3.7 C.5.15
# PS3.4 Table F.7.2-2: Error ID (0000,0903) of "may no longer be updated".
ERROR_ID_MAY_NO_LONGER_BE_UPDATED = 0xA710

_MPPS_STATUS = {
    services.MissingAttribute: STATUS_MISSING_ATTRIBUTE,
    services.MissingAttributeValue: STATUS_MISSING_ATTRIBUTE_VALUE,
    services.InvalidAttributeValue: STATUS_INVALID_ATTRIBUTE_VALUE,
    services.DuplicateInstance: STATUS_DUPLICATE_SOP_INSTANCE,
    services.NoSuchInstance: STATUS_NO_SUCH_OBJECT_INSTANCE,
    services.MayNoLongerBeUpdated: STATUS_PROCESSING_FAILURE,
}


def _criteria(identifier: Dataset) -> str:
    """The keys of a query that carry a value, for the audit trail."""
    parts = []
    for element in identifier:
        if element.VR == "SQ":
            for item in element.value or []:
                parts.append(_criteria(item))
        elif (
            element.value not in (None, "", "*") and element.tag != selectors.SPECIFIC_CHARACTER_SET
        ):
            parts.append(f"{element.keyword}={element.value}")
    return " ".join(part for part in parts if part)


def handle_worklist_find(event: Event) -> Iterator[tuple[Status, Dataset | None]]:
    """Answer an MWL C-FIND (PS3.4 K.4.1.1): one pending response per match, then success."""
    usable_database()
    ae_title, address = calling(event)
    try:
        identifier = event.identifier
    except Exception as exc:
        logger.info("MWL query from %s cannot be decoded: %s", ae_title, exc)
        yield status_dataset(STATUS_UNABLE_TO_PROCESS, "the identifier cannot be decoded"), None
        return
    try:
        matches = selectors.find_worklist_items(identifier)
    except InvalidQuery as exc:
        logger.info("MWL query from %s refused: %s", ae_title, exc)
        yield (
            status_dataset(STATUS_IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, str(exc), tags=(exc.tag,)),
            None,
        )
        return
    except Exception:  # the details go to the log, not to the peer
        logger.exception("MWL query from %s failed", ae_title)
        yield status_dataset(STATUS_UNABLE_TO_PROCESS, "the worklist cannot be read now"), None
        return
    criteria = _criteria(identifier)

    def described(outcome: str) -> str:
        return f"{outcome}; {criteria}"[:2000]

    # Recorded before any match goes out, written after the final response (when, says
    # core.audit.answering); the count is known once all went.
    found = audit.record_answered(
        audit.Action.QUERY,
        actor_name=ae_title,
        channel=audit.Channel.DICOM,
        source_address=address,
        object_type="ris.scheduledprocedurestep",
        detail=described("MWL C-FIND interrupted"),
    )
    for reply in matches:
        if event.is_cancelled:
            # pynetdicom sends the Cancel status and does not come back here.
            found["detail"] = described(f"{matches.count} result(s); MWL C-FIND cancelled")
            yield STATUS_CANCEL, None
            return
        warning = bool(matches.unsupported)
        yield (STATUS_PENDING_OPTIONAL_KEYS_NOT_SUPPORTED if warning else STATUS_PENDING), reply
    found["detail"] = described(f"{matches.count} result(s); MWL C-FIND completed")


def worklist_service(ae: ApplicationEntity) -> list[EventHandler]:
    """Offer the Modality Worklist Information Model - FIND SOP Class as SCP (PS3.4 K.6.1)."""
    ae.add_supported_context(ModalityWorklistInformationFind)
    return [
        (evt.EVT_C_FIND, handle_worklist_find),
    ]


def _mpps_failure(exc: services.MppsError) -> Dataset:
    status = status_dataset(_MPPS_STATUS[type(exc)], exc.comment)
    if isinstance(exc, services.MayNoLongerBeUpdated):
        status.ErrorID = ERROR_ID_MAY_NO_LONGER_BE_UPDATED
    elif exc.tags:
        status.AttributeIdentifierList = list(exc.tags)
    return status


def handle_mpps_create(event: Event) -> tuple[Status, Dataset | None]:
    """Create an MPPS instance (PS3.4 F.7.2.1): the exam is in progress."""
    usable_database()
    ae_title, address = calling(event)
    requested_uid = cast(N_CREATE, event.request).AffectedSOPInstanceUID
    # PS3.7 10.1.5.1.3: with no UID in the request, the SCP assigns one and returns it.
    sop_instance_uid = str(requested_uid) if requested_uid else generate_uid()
    try:
        attributes = event.attribute_list
        result = services.create_performed_step(
            sop_instance_uid, attributes, calling_ae_title=ae_title, source_address=address
        )
    except services.MppsError as exc:
        logger.info("MPPS N-CREATE from %s refused: %s", ae_title, exc.comment)
        return _mpps_failure(exc), None
    except Exception:  # the details go to the log, not to the peer
        logger.exception("MPPS N-CREATE from %s failed", ae_title)
        return status_dataset(STATUS_PROCESSING_FAILURE, "the step cannot be recorded now"), None
    reply = Dataset()
    if not requested_uid:
        reply.AffectedSOPInstanceUID = sop_instance_uid
    return _outcome(result), reply


def handle_mpps_set(event: Event) -> tuple[Status, Dataset | None]:
    """Update an MPPS instance (PS3.4 F.7.2.2): COMPLETED or DISCONTINUED ends the exam."""
    usable_database()
    ae_title, address = calling(event)
    sop_instance_uid = str(cast(N_SET, event.request).RequestedSOPInstanceUID)
    try:
        modifications = event.modification_list
        result = services.update_performed_step(
            sop_instance_uid, modifications, calling_ae_title=ae_title, source_address=address
        )
    except services.MppsError as exc:
        logger.info("MPPS N-SET from %s refused: %s", ae_title, exc.comment)
        return _mpps_failure(exc), None
    except Exception:  # the details go to the log, not to the peer
        logger.exception("MPPS N-SET from %s failed", ae_title)
        return status_dataset(STATUS_PROCESSING_FAILURE, "the step cannot be updated now"), None
    return _outcome(result), None


def _outcome(result: services.MppsResult) -> Status:
    if not result.warnings:
        return STATUS_SUCCESS
    keyword, why = result.warnings[0]
    return status_dataset(STATUS_ATTRIBUTE_VALUE_OUT_OF_RANGE, f"{keyword}: {why}")


def mpps_service(ae: ApplicationEntity) -> list[EventHandler]:
    """Offer the Modality Performed Procedure Step SOP Class as SCP (PS3.4 F.7)."""
    ae.add_supported_context(ModalityPerformedProcedureStep)
    return [
        (evt.EVT_N_CREATE, handle_mpps_create),
        (evt.EVT_N_SET, handle_mpps_set),
    ]
