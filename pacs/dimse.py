"""DIMSE services of the archive: each adds its presentation contexts and returns its handlers.

Every function named in settings.DICOM_SERVICES takes the one AE, adds the SOP classes
it serves as supported presentation contexts, and returns the (event, handler) pairs
that core.dicom_server binds when the AE starts listening. Handlers are thin: check the
calling node, call a service or selector, answer with a named status.
"""

from __future__ import annotations

import atexit
import itertools
import logging
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db import close_old_connections
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import evt
from pynetdicom.ae import ApplicationEntity
from pynetdicom.events import Event
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # made at import
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from core import audit
from core.dicom_lean import LeanAssociation
from core.dicom_server import calling, status_dataset, usable_database
from pacs import journal, retrieve, selectors, services
from pacs.selectors import node_cache
from pacs.storage import default_storage

logger = logging.getLogger(__name__)

EventHandler = tuple[Any, ...]

# PS3.7 C.1.1 and PS3.4 Annexes B, C: the statuses these services answer with.
STATUS_SUCCESS = 0x0000
STATUS_PENDING = 0xFF00
STATUS_CANCEL = 0xFE00
STATUS_REFUSED_NOT_AUTHORIZED = 0x0124  # PS3.7 C.5.20: Refused, not authorized
STATUS_DUPLICATE_SOP_INSTANCE = 0x0111  # PS3.7 C.5.7
STORE_OUT_OF_RESOURCES = 0xA700  # PS3.4 B.2.3
STORE_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
STORE_CANNOT_UNDERSTAND = 0xC000
FIND_IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # PS3.4 C.4.1.1.4
FIND_UNABLE_TO_PROCESS = 0xC000
RETRIEVE_UNKNOWN_DESTINATION = 0xA801  # PS3.4 C.4.2.1.5
RETRIEVE_UNABLE_TO_PROCESS = 0xC000

_STORE_STATUS = {
    services.REASON_UNREADABLE: STORE_CANNOT_UNDERSTAND,
    services.REASON_SOP_CLASS_MISMATCH: STORE_DATASET_DOES_NOT_MATCH_SOP_CLASS,
    services.REASON_DUPLICATE: STATUS_DUPLICATE_SOP_INSTANCE,
    services.REASON_OUT_OF_RESOURCES: STORE_OUT_OF_RESOURCES,
}
_FIND_MODELS = {
    PatientRootQueryRetrieveInformationModelFind: selectors.PATIENT_ROOT,
    StudyRootQueryRetrieveInformationModelFind: selectors.STUDY_ROOT,
    PatientRootQueryRetrieveInformationModelMove: selectors.PATIENT_ROOT,
    StudyRootQueryRetrieveInformationModelMove: selectors.STUDY_ROOT,
    PatientRootQueryRetrieveInformationModelGet: selectors.PATIENT_ROOT,
    StudyRootQueryRetrieveInformationModelGet: selectors.STUDY_ROOT,
}


failure = status_dataset  # a status with an ErrorComment (PS3.7 C.4.2.1.4)


# -- Who may associate, and do what ---------------------------------------------------


def known_calling_ae_titles() -> list[str] | None:
    """The calling AE titles allowed to associate; None when any may (DICOM_ACCEPT_UNKNOWN_AE)."""
    if settings.DICOM_ACCEPT_UNKNOWN_AE:
        return None
    try:
        return list(node_cache.nodes())
    finally:
        close_old_connections()


def _may(event: Event, right: str) -> bool:
    """Tell whether the calling node holds RIGHT (may_store, may_query, may_retrieve)."""
    ae_title, _ = calling(event)
    node = node_cache.nodes().get(ae_title)
    if node is None:
        return bool(settings.DICOM_ACCEPT_UNKNOWN_AE)
    return bool(getattr(node, right))


def _audit_association(event: Event, outcome: str, detail: str) -> None:
    # Off the association's path: the peer's first request does not wait for the row, which
    # is committed before the association ends on this side (core.dicom_server writes held
    # and queued rows when it is released or aborted).
    ae_title, address = calling(event)
    facts: audit.Facts = {
        "actor_name": ae_title,
        "channel": audit.Channel.DICOM,
        "source_address": address,
        "outcome": outcome,
        "detail": detail,
    }
    if outcome == audit.Outcome.SUCCESS and isinstance(event.assoc, LeanAssociation):
        # It only verifies or queries, on this thread: the row is written once the peer
        # has its A-RELEASE-RP. Written meanwhile by the audit writer, it took CPU from
        # the association itself (0.3 to 0.5 ms of a replayed C-ECHO or C-FIND).
        audit.hold(audit.Action.ASSOCIATION, **facts)
    else:
        audit.record_soon(audit.Action.ASSOCIATION, **facts)


def handle_accepted(event: Event) -> None:
    _audit_association(event, audit.Outcome.SUCCESS, f"accepted by {event.assoc.acceptor.ae_title}")


def handle_rejected(event: Event) -> None:
    _audit_association(event, audit.Outcome.FAILURE, f"rejected: {_rejection_reason(event)}")


# PS3.8 Table 9-21: the A-ASSOCIATE-RJ's (source, reason/diag.).
_REJECTION_REASONS = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognised",
    (1, 7): "called AE title not recognised",
    (2, 1): "no reason given (ACSE)",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded",
}


def _rejection_reason(event: Event) -> str:
    """Why EVENT's association was refused, as the A-ASSOCIATE-RJ told the peer
    (core.dicom_lean and core.dicom_reactor keep its fields on the association)."""
    rejection = getattr(event.assoc, "rejection", None)
    if rejection is None:
        return "reason not known"
    result, source, reason = rejection
    text = _REJECTION_REASONS.get((source, reason), f"source {source}, reason {reason}")
    if (source, reason) == (1, 3):
        text += f": {calling(event)[0]!r} is not a known node"
    elif (source, reason) == (3, 2):
        text += f": at most {event.assoc.ae.maximum_associations} associations at once"
    return f"{text} ({'permanent' if result == 1 else 'transient'})"


def access_service(ae: ApplicationEntity) -> list[EventHandler]:
    """Only known nodes may associate; every association, accepted or not, is audited."""
    ae.calling_ae_titles = known_calling_ae_titles  # type: ignore[attr-defined]
    return [
        (evt.EVT_ACCEPTED, handle_accepted),
        (evt.EVT_REJECTED, handle_rejected),
    ]


# -- Verification ---------------------------------------------------------------------


def handle_echo(event: Event) -> int:
    """Answer a C-ECHO request (PS3.4 A.4): the association works, nothing more."""
    return STATUS_SUCCESS


def verification_service(ae: ApplicationEntity) -> list[EventHandler]:
    """Offer the Verification SOP Class as SCP (PS3.4 Annex A)."""
    ae.add_supported_context(Verification)
    return [(evt.EVT_C_ECHO, handle_echo)]


# -- Storage ---------------------------------------------------------------------------


def handle_store(event: Event) -> int | Dataset:
    """Store one instance durably and index it; success only once it is safe (PS3.4 B.2.3)."""
    if not _may(event, "may_store"):
        return failure(STATUS_REFUSED_NOT_AUTHORIZED, "this AE title may not store")
    ae_title, address = calling(event)
    cache = getattr(event.assoc, "_archive_cache", None)
    if cache is None:
        cache = event.assoc._archive_cache = services.AssociationCache()  # type: ignore[attr-defined]
    try:
        services.receive_instance(
            event.request.DataSet.getvalue(),  # type: ignore[union-attr]
            transfer_syntax=event.context.transfer_syntax,
            context_sop_class=event.context.abstract_syntax,
            calling_ae=ae_title,
            source_address=address,
            cache=cache,
        )
    except services.IngestError as exc:
        logger.warning("C-STORE from %s refused: %s", ae_title, exc.comment)
        return failure(_STORE_STATUS[exc.reason], exc.comment)
    except Exception:
        logger.exception("C-STORE from %s failed", ae_title)
        return failure(STORE_OUT_OF_RESOURCES, "internal error; nothing was stored")
    return STATUS_SUCCESS


# pynetdicom accepts the first of these that a proposed context holds: uncompressed first
# (a peer proposing both gets its images as they are), then the rest in pydicom's order.
_UNCOMPRESSED_FIRST = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]
STORAGE_TRANSFER_SYNTAXES = _UNCOMPRESSED_FIRST + [
    syntax for syntax in AllTransferSyntaxes if syntax not in _UNCOMPRESSED_FIRST
]


def storage_service(ae: ApplicationEntity) -> list[EventHandler]:
    """Storage SCP for every storage SOP class, in every transfer syntax, stored as received.

    Both roles are accepted, so that a C-GET requestor can take them back on its association.
    With DICOM_INTAKE_JOURNAL on, the intake journal starts here, and indexes whatever a
    stopped process left in it before the listener opens (pacs.journal).
    """
    if settings.DICOM_INTAKE_JOURNAL:
        intake = journal.Journal(
            default_storage(), services.index_journal_entry, services.index_journal_entries
        )
        journal.install(intake)
        intake.start()
        atexit.register(intake.stop)
    for context in StoragePresentationContexts:
        ae.add_supported_context(
            str(context.abstract_syntax), STORAGE_TRANSFER_SYNTAXES, scu_role=True, scp_role=True
        )
    return [(evt.EVT_C_STORE, handle_store)]


# -- Query -----------------------------------------------------------------------------


def handle_find(event: Event) -> Iterator[tuple[int, Dataset | None]]:
    """Answer a C-FIND from the index (PS3.4 C.4.1), one pending response per match."""
    if not _may(event, "may_query"):
        yield failure(STATUS_REFUSED_NOT_AUTHORIZED, "this AE title may not query"), None  # type: ignore[misc]
        return
    ae_title, address = calling(event)
    model = _FIND_MODELS[event.request.AffectedSOPClassUID]  # type: ignore[union-attr]
    try:
        identifier = event.identifier
        query = selectors.build_query(identifier, model)
    except selectors.QueryError as exc:
        yield failure(FIND_IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, str(exc)), None  # type: ignore[misc]
        return
    except Exception as exc:  # an identifier that cannot be decoded
        yield failure(FIND_UNABLE_TO_PROCESS, f"identifier cannot be read: {exc}"), None  # type: ignore[misc]
        return
    retrieve_ae_title = event.assoc.ae.ae_title

    def described(outcome: str) -> str:
        return f"{outcome}; keys: {', '.join(query.keys)}"

    first, rest = selectors.match_rows(query)
    # Recorded before any match goes out, written after the final response (when, says
    # core.audit.answering); the count is amended if fewer went.
    known = str(len(first)) if rest is None else f"at least {len(first)}"
    found = audit.record_answered(
        audit.Action.QUERY,
        actor_name=ae_title,
        channel=audit.Channel.DICOM,
        source_address=address,
        object_type=f"pacs.{query.level.lower()}",
        detail=described(f"{known} result(s); C-FIND {model} root"),
    )
    count = 0
    rows = itertools.chain(first, rest or ())
    for response in selectors.responses(rows, query, identifier, retrieve_ae_title):
        if event.is_cancelled:
            sent = f"{count} of {known} result(s) sent"
            found["detail"] = described(f"{sent}; C-FIND {model} root cancelled")
            yield STATUS_CANCEL, None
            return
        count += 1
        yield STATUS_PENDING, response
    if rest is not None:
        found["detail"] = described(f"{count} result(s); C-FIND {model} root")


def query_service(ae: ApplicationEntity) -> list[EventHandler]:
    """Patient Root and Study Root Query/Retrieve - FIND as SCP."""
    ae.add_supported_context(PatientRootQueryRetrieveInformationModelFind)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    return [(evt.EVT_C_FIND, handle_find)]


# -- Retrieve ----------------------------------------------------------------------------


def _retrieve_targets(event: Event) -> list[retrieve.StoredInstance]:
    model = _FIND_MODELS[event.request.AffectedSOPClassUID]  # type: ignore[union-attr]
    return retrieve.instances_to_retrieve(event.identifier, model)


def _audit_retrieve(event: Event, instances: list[retrieve.StoredInstance], how: str) -> None:
    ae_title, address = calling(event)
    studies = sorted({instance.study_instance_uid for instance in instances})
    audit.record(
        audit.Action.EXPORT,
        actor_name=ae_title,
        channel=audit.Channel.DICOM,
        source_address=address,
        object_type="pacs.study",
        object_id=studies[0] if len(studies) == 1 else "",
        detail=f"{how}: {len(instances)} instance(s) of {len(studies)} study(ies)",
    )


def _unsendable(instance: retrieve.StoredInstance) -> Dataset:
    """A stand-in that no accepted context fits: pynetdicom counts it as a failed sub-operation."""
    stand_in = Dataset()
    stand_in.SOPClassUID = instance.sop_class_uid
    stand_in.SOPInstanceUID = instance.sop_instance_uid
    stand_in.file_meta = Dataset()  # type: ignore[assignment]
    # A transfer syntax no peer has accepted (a UID under our own example root).
    stand_in.file_meta.TransferSyntaxUID = UID("1.2.826.0.1.3680043.8.498.0")
    return stand_in


def _sub_operations(
    event: Event, instances: list[retrieve.StoredInstance], accepted_of: Any
) -> Iterator[tuple[int, Dataset | None]]:
    storage = default_storage()
    for instance in instances:
        if event.is_cancelled:
            yield STATUS_CANCEL, None
            return
        dataset = retrieve.dataset_for(instance, accepted_of(), storage)
        yield STATUS_PENDING, dataset if dataset is not None else _unsendable(instance)


def handle_move(event: Event) -> Iterator[Any]:
    """C-MOVE (PS3.4 C.4.2): send the matches to a known destination over a new association."""
    if not _may(event, "may_retrieve"):
        # pynetdicom's first C-MOVE answer is a destination: none means 0xA801, refused.
        logger.warning("C-MOVE from %s refused: may not retrieve", calling(event)[0])
        yield None, None
        return
    destination_title = str(event.move_destination).strip()
    destination = node_cache.nodes().get(destination_title)
    if destination is None or not destination.may_retrieve:
        logger.warning("C-MOVE to unknown destination %r refused", destination_title)
        yield None, None  # pynetdicom answers 0xA801, Move destination unknown
        return
    try:
        instances = _retrieve_targets(event)
    except retrieve.RetrieveError as exc:
        # pynetdicom wants a destination and a count before any final status.
        yield destination.host, destination.port
        yield 1
        yield failure(RETRIEVE_UNABLE_TO_PROCESS, str(exc)), None
        return
    established: dict[str, Any] = {}

    def _remember(sub_event: Event) -> None:
        established["assoc"] = sub_event.assoc

    yield (
        destination.host,
        destination.port,
        {
            "contexts": retrieve.contexts_for(instances) or None,
            "evt_handlers": [(evt.EVT_ESTABLISHED, _remember)],
        },
    )
    yield len(instances)
    _audit_retrieve(event, instances, f"C-MOVE to {destination_title}")

    def accepted() -> dict[str, set[str]]:
        return retrieve.accepted_syntaxes(established["assoc"].accepted_contexts)

    yield from _sub_operations(event, instances, accepted)


def handle_get(event: Event) -> Iterator[Any]:
    """C-GET (PS3.4 C.4.3): send the matches back on the requestor's own association."""
    if not _may(event, "may_retrieve"):
        yield 1
        yield failure(STATUS_REFUSED_NOT_AUTHORIZED, "this AE title may not retrieve"), None
        return
    try:
        instances = _retrieve_targets(event)
    except retrieve.RetrieveError as exc:
        yield 1
        yield failure(RETRIEVE_UNABLE_TO_PROCESS, str(exc)), None
        return
    yield len(instances)
    _audit_retrieve(event, instances, "C-GET")
    accepted = retrieve.accepted_syntaxes(event.assoc.accepted_contexts)
    yield from _sub_operations(event, instances, lambda: accepted)


def retrieve_service(ae: ApplicationEntity) -> list[EventHandler]:
    """Patient Root and Study Root Query/Retrieve - MOVE and GET as SCP."""
    for sop_class in (
        PatientRootQueryRetrieveInformationModelMove,
        StudyRootQueryRetrieveInformationModelMove,
        PatientRootQueryRetrieveInformationModelGet,
        StudyRootQueryRetrieveInformationModelGet,
    ):
        ae.add_supported_context(sop_class)
    return [(evt.EVT_C_MOVE, handle_move), (evt.EVT_C_GET, handle_get)]


# -- Storage Commitment ----------------------------------------------------------------

# PS3.7 10.1.4.1.10: the N-ACTION statuses (PS3.4 J.3.2.1.4 defines none of its own).
ACTION_PROCESSING_FAILURE = 0x0110  # PS3.7 C.5.5
ACTION_NO_SUCH_SOP_INSTANCE = 0x0112  # PS3.7 C.5.9
ACTION_INVALID_ARGUMENT_VALUE = 0x0115  # PS3.7 C.5.10
ACTION_NO_SUCH_SOP_CLASS = 0x0118  # PS3.7 C.5.20
ACTION_NO_SUCH_ACTION = 0x0123  # PS3.7 C.5.17


def handle_commitment_request(event: Event) -> tuple[int | Dataset, Dataset | None]:
    """Record a Storage Commitment request (PS3.4 J.3.2); the result follows (pacs.commitment)."""
    from pacs import commitment

    usable_database()
    ae_title, address = calling(event)
    node = node_cache.nodes().get(ae_title)
    # Refused for an unknown node even when any AE may associate: the result needs its address.
    if node is None or not node.may_store:
        logger.warning("storage commitment request from %s refused: not a storing node", ae_title)
        return failure(STATUS_REFUSED_NOT_AUTHORIZED, "this AE title may not store"), None
    request: Any = event.request
    if request.RequestedSOPClassUID != commitment.STORAGE_COMMITMENT_PUSH_MODEL:
        return failure(ACTION_NO_SUCH_SOP_CLASS, "not the Storage Commitment Push Model"), None
    if request.RequestedSOPInstanceUID != commitment.STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE:
        return failure(ACTION_NO_SUCH_SOP_INSTANCE, "not SOP instance 1.2.840.10008.1.20.1.1"), None
    if request.ActionTypeID != commitment.ACTION_REQUEST_STORAGE_COMMITMENT:
        return failure(ACTION_NO_SUCH_ACTION, f"no action type {request.ActionTypeID}"), None
    try:
        information = event.action_information
    except Exception as exc:
        return failure(ACTION_INVALID_ARGUMENT_VALUE, f"Action Information unreadable: {exc}"), None
    message_id = int(request.MessageID)
    try:
        commitment.record_request(
            commitment.read_request(information),
            calling_ae_title=ae_title,
            called_ae_title=str(event.assoc.acceptor.ae_title).strip(),
            source_address=address,
            defer=lambda start: commitment.run_after_response(event.assoc, message_id, start),
        )
    except commitment.RequestError as exc:
        logger.warning("storage commitment request from %s refused: %s", ae_title, exc.comment)
        return failure(ACTION_INVALID_ARGUMENT_VALUE, exc.comment), None
    except Exception:
        logger.exception("storage commitment request from %s failed", ae_title)
        return failure(ACTION_PROCESSING_FAILURE, "internal error; nothing was recorded"), None
    return STATUS_SUCCESS, None


def commitment_service(ae: ApplicationEntity) -> list[EventHandler]:
    """Storage Commitment Push Model as SCP (PS3.4 Annex J); results go on new associations."""
    from pacs import commitment

    ae.add_supported_context(commitment.STORAGE_COMMITMENT_PUSH_MODEL)
    return [(evt.EVT_N_ACTION, handle_commitment_request)]
