"""C-MOVE and C-GET sub-operations: which instances, which contexts, which bytes.

An instance goes out in its stored transfer syntax when the peer accepted it; else in
an uncompressed syntax the peer accepted (pynetdicom converts between those), after
decompressing it when it is stored compressed. Only when no accepted syntax can be made
does the sub-operation fail (PS3.4 C.4.2.3.1: counted in the final response).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.presentation import PresentationContext, build_context

from pacs.models import Instance
from pacs.selectors import IMAGE, build_query
from pacs.storage import FileStorage

logger = logging.getLogger(__name__)

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)
# PS3.8 9.3.2.2: at most 128 presentation contexts in one association request.
MAX_CONTEXTS = 128


@dataclass(frozen=True)
class StoredInstance:
    study_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    file_path: str


class RetrieveError(ValueError):
    """The retrieve identifier cannot be resolved; fit for an ErrorComment."""


def instances_to_retrieve(identifier: Dataset, model: str) -> list[StoredInstance]:
    """The instances below the keys of a C-MOVE/C-GET identifier (PS3.4 C.4.2.2.1), one query."""
    level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    keys = Dataset()
    keys.QueryRetrieveLevel = IMAGE
    for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        if keyword in identifier and str(identifier.get(keyword) or "").strip():
            setattr(keys, keyword, identifier.get(keyword))
    unique = {
        "PATIENT": "PatientID",
        "STUDY": "StudyInstanceUID",
        "SERIES": "SeriesInstanceUID",
        "IMAGE": "SOPInstanceUID",
    }.get(level)
    if unique is None:
        raise RetrieveError(f"QueryRetrieveLevel {level!r} is not PATIENT, STUDY, SERIES or IMAGE")
    if unique not in keys:
        raise RetrieveError(f"{unique} is required to retrieve at the {level} level")
    try:
        query = build_query(keys, "patient" if level == "PATIENT" else "study")
    except ValueError as exc:
        raise RetrieveError(str(exc)) from exc
    rows = (
        Instance.objects.filter(query.conditions)
        .order_by("series__study_id", "series_id", "instance_number", "id")
        .values_list(
            "series__study__study_instance_uid",
            "sop_instance_uid",
            "sop_class_uid",
            "transfer_syntax_uid",
            "file_path",
        )
    )
    return [StoredInstance(*row) for row in rows]


def contexts_for(instances: list[StoredInstance]) -> list[PresentationContext]:
    """Presentation contexts to propose to a C-MOVE destination for INSTANCES.

    One context per stored (SOP class, transfer syntax), and one uncompressed context per
    SOP class, so that the peer may take the stored bytes or an uncompressed copy.
    """
    stored: dict[str, set[str]] = defaultdict(set)
    for instance in instances:
        stored[instance.sop_class_uid].add(instance.transfer_syntax_uid)
    contexts: list[PresentationContext] = []
    for sop_class, syntaxes in stored.items():
        for syntax in sorted(syntaxes - set(UNCOMPRESSED)):
            contexts.append(build_context(sop_class, [syntax]))
        contexts.append(build_context(sop_class, list(UNCOMPRESSED)))
    if len(contexts) > MAX_CONTEXTS:
        # Too many kinds of object for one association: keep the uncompressed ones.
        contexts = [c for c in contexts if c.transfer_syntax[0] in UNCOMPRESSED][:MAX_CONTEXTS]
    return contexts


def accepted_syntaxes(contexts: list[PresentationContext]) -> dict[str, set[str]]:
    """SOP class -> transfer syntaxes the peer accepted us sending (we are the storage SCU)."""
    accepted: dict[str, set[str]] = defaultdict(set)
    for context in contexts:
        if context.as_scu and context.transfer_syntax:
            accepted[str(context.abstract_syntax)].add(str(context.transfer_syntax[0]))
    return accepted


def dataset_for(
    instance: StoredInstance, accepted: dict[str, set[str]], storage: FileStorage
) -> Dataset | None:
    """Read INSTANCE ready to send in a syntax the peer accepted, or None if none can be made."""
    syntaxes = accepted.get(instance.sop_class_uid, set())
    if not syntaxes:
        return None
    dataset = dcmread(storage.path(instance.file_path))
    stored = UID(instance.transfer_syntax_uid)
    if stored in syntaxes:
        return dataset  # as stored, byte for byte
    if not any(syntax in UNCOMPRESSED for syntax in syntaxes):
        return None  # the peer takes only other compressed syntaxes: we do not re-compress
    if stored in UNCOMPRESSED or stored == DeflatedExplicitVRLittleEndian:
        if stored == DeflatedExplicitVRLittleEndian:
            dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        return dataset  # pynetdicom converts between the uncompressed syntaxes
    try:
        dataset.decompress()
    except Exception as exc:  # no decoder for this syntax, or corrupt pixel data
        logger.warning("cannot decompress %s (%s): %s", instance.sop_instance_uid, stored, exc)
        return None
    return dataset


def failed_identifier(instances: list[Any]) -> Dataset:
    """The identifier of a final response naming failed instances (PS3.4 C.4.2.1.4.2)."""
    identifier = Dataset()
    identifier.FailedSOPInstanceUIDList = [uid for uid in instances if uid]
    return identifier
