"""MPPS writes: record what the modality performed and move the exam along in the RIS.

N-CREATE (IN PROGRESS) and N-SET (COMPLETED or DISCONTINUED) arrive here from
worklist.dimse; the exam's state in the RIS changes only through ris.services, and
every instance is kept, even one that references no scheduled step (the unscheduled
case of IHE SWF): it is marked for reconciliation instead of being refused.
"""

from __future__ import annotations

import datetime as dt
import logging
import zoneinfo
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from core import audit
from ris import services as ris_services
from ris.models import ScheduledProcedureStep
from worklist import matching
from worklist.models import PerformedProcedureStep

logger = logging.getLogger(__name__)

# Performed Procedure Step Status (0040,0252), enumerated values (PS3.3 C.4.14).
DICOM_STATUS = {
    "IN PROGRESS": PerformedProcedureStep.Status.IN_PROGRESS,
    "COMPLETED": PerformedProcedureStep.Status.COMPLETED,
    "DISCONTINUED": PerformedProcedureStep.Status.DISCONTINUED,
}
FINAL_STATES = (PerformedProcedureStep.Status.COMPLETED, PerformedProcedureStep.Status.DISCONTINUED)

# PS3.4 Table F.7.2-1: Type 1 at N-CREATE (present, with a value).
CREATE_REQUIRED = (
    "PerformedProcedureStepStatus",
    "PerformedProcedureStepID",
    "PerformedStationAETitle",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "Modality",
    "ScheduledStepAttributesSequence",
)
# PS3.4 Table F.7.2-1: what an N-SET may not change ("Not allowed" in the N-SET column).
NOT_SETTABLE = (
    "ScheduledStepAttributesSequence",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "ReferencedPatientSequence",
    "PerformedProcedureStepID",
    "PerformedStationAETitle",
    "PerformedStationName",
    "PerformedLocation",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "Modality",
    "StudyID",
)
# Steps a performed step may still be for, when the modality names no step.
UNFINISHED_STEP_STATES = (
    ScheduledProcedureStep.Status.SCHEDULED,
    ScheduledProcedureStep.Status.ARRIVED,
    ScheduledProcedureStep.Status.IN_PROGRESS,
)
MAY_NO_LONGER_BE_UPDATED = "Performed Procedure Step Object may no longer be updated"
SPECIFIC_CHARACTER_SET = Tag(0x0008, 0x0005)


class MppsError(Exception):
    """An MPPS request refused; the DIMSE handler answers with the matching status."""

    def __init__(self, comment: str, keywords: tuple[str, ...] = ()) -> None:
        super().__init__(comment)
        self.comment = comment
        self.tags = tuple(Tag(keyword) for keyword in keywords)


class MissingAttribute(MppsError):
    """PS3.7 C.5.14 (0120H): a required attribute is absent."""


class MissingAttributeValue(MppsError):
    """PS3.7 C.5.15 (0121H): a required attribute has no value."""


class InvalidAttributeValue(MppsError):
    """PS3.7 C.5.4 (0106H): a value is malformed or not allowed here."""


class DuplicateInstance(MppsError):
    """PS3.7 C.5.7 (0111H): N-CREATE of an instance that exists."""


class NoSuchInstance(MppsError):
    """PS3.7 C.5.9 (0112H): N-SET of an instance we never created."""


class MayNoLongerBeUpdated(MppsError):
    """PS3.4 F.7.2.2.3 and Table F.7.2-2 (0110H, Error ID A710H): the step has ended."""


@dataclass
class MppsResult:
    performed_step: PerformedProcedureStep
    # Values accepted but out of range (0116H, a warning): (keyword, why).
    warnings: list[tuple[str, str]] = field(default_factory=list)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _require(ds: Dataset, keywords: tuple[str, ...]) -> None:
    missing = tuple(keyword for keyword in keywords if keyword not in ds)
    if missing:
        raise MissingAttribute(f"missing {', '.join(missing)}", missing)
    empty = tuple(keyword for keyword in keywords if not ds[keyword].value)
    if empty:
        raise MissingAttributeValue(f"no value for {', '.join(empty)}", empty)


def _status(ds: Dataset) -> str:
    value = _text(ds, "PerformedProcedureStepStatus")
    if value not in DICOM_STATUS:
        raise InvalidAttributeValue(
            f"Performed Procedure Step Status {value!r} is not a valid value",
            ("PerformedProcedureStepStatus",),
        )
    return DICOM_STATUS[value]


def _zone(ds: Dataset) -> dt.tzinfo:
    """The time zone of the dataset's dates and times: its own offset, else the department's."""
    offset = _text(ds, "TimezoneOffsetFromUTC")
    if offset:
        try:
            return matching.parse_utc_offset(offset)
        except matching.InvalidMatchingKey as exc:
            raise InvalidAttributeValue(str(exc), ("TimezoneOffsetFromUTC",)) from exc
    return zoneinfo.ZoneInfo(settings.TIME_ZONE)


def _moment(ds: Dataset, date_keyword: str, time_keyword: str, zone: dt.tzinfo) -> dt.datetime:
    """Combine a DA and a TM attribute into an aware date-time (PS3.5 6.2)."""
    date_text, time_text = _text(ds, date_keyword), _text(ds, time_keyword)
    try:
        day = matching.parse_date(date_text)
    except matching.InvalidMatchingKey as exc:
        raise InvalidAttributeValue(str(exc), (date_keyword,)) from exc
    try:
        first, _ = matching.parse_time(time_text)
    except matching.InvalidMatchingKey as exc:
        raise InvalidAttributeValue(str(exc), (time_keyword,)) from exc
    return dt.datetime.combine(day, first).replace(tzinfo=zone)


def _json(ds: Dataset) -> dict[str, Any]:
    """The dataset in the DICOM JSON model, text decoded to Unicode (PS3.18 F.2)."""
    encoded: dict[str, Any] = ds.to_json_dict(bulk_data_threshold=65536)
    # The JSON holds Unicode whatever character set the message used (PS3.4 F.7.2.2.3).
    encoded[f"{SPECIFIC_CHARACTER_SET:08X}"] = {"vr": "CS", "Value": ["ISO_IR 192"]}
    return encoded


def _element_json(element: DataElement) -> Any:
    return element.to_json_dict(bulk_data_element_handler=None, bulk_data_threshold=65536)


def _series(ds: Dataset) -> list[dict[str, Any]]:
    """The Performed Series Sequence (0040,0340) as plain data, with its instances."""
    series = []
    for item in ds.get("PerformedSeriesSequence") or []:
        instances = [
            {
                "sop_class_uid": _text(reference, "ReferencedSOPClassUID"),
                "sop_instance_uid": _text(reference, "ReferencedSOPInstanceUID"),
            }
            for keyword in (
                "ReferencedImageSequence",
                "ReferencedNonImageCompositeSOPInstanceSequence",
            )
            for reference in item.get(keyword) or []
        ]
        series.append(
            {
                "series_instance_uid": _text(item, "SeriesInstanceUID"),
                "series_description": _text(item, "SeriesDescription"),
                "protocol_name": _text(item, "ProtocolName"),
                "retrieve_ae_title": _text(item, "RetrieveAETitle"),
                "performing_physician_name": _text(item, "PerformingPhysicianName"),
                "operators_name": _text(item, "OperatorsName"),
                "instances": instances,
            }
        )
    return series


def _discontinuation_reason(ds: Dataset) -> str:
    """The reason a step was discontinued, from its code sequence (0040,0281) or comments."""
    for item in ds.get("PerformedProcedureStepDiscontinuationReasonCodeSequence") or []:
        meaning, value = _text(item, "CodeMeaning"), _text(item, "CodeValue")
        scheme = _text(item, "CodingSchemeDesignator")
        if meaning or value:
            code = f" ({value}, {scheme})" if value and meaning else value
            return f"{meaning}{code}"[:255]
    return _text(ds, "CommentsOnThePerformedProcedureStep")[:255]


def _scheduled_steps(ds: Dataset) -> tuple[list[ScheduledProcedureStep], list[str]]:
    """Find the RIS steps the Scheduled Step Attributes Sequence names; say what did not match."""
    steps: dict[int, ScheduledProcedureStep] = {}
    problems: list[str] = []
    for item in ds.ScheduledStepAttributesSequence:
        sps_id = _text(item, "ScheduledProcedureStepID")
        study_uid = _text(item, "StudyInstanceUID")
        accession = _text(item, "AccessionNumber")
        candidates = ScheduledProcedureStep.objects.select_related("requested_procedure__order")
        if sps_id:
            step = candidates.filter(sps_id=sps_id).first()
            if step is None:
                problems.append(f"no scheduled step {sps_id}")
                continue
            if study_uid and step.requested_procedure.study_instance_uid != study_uid:
                problems.append(f"SPS {sps_id} belongs to another Study Instance UID")
            found = [step]
        else:
            # No step named: the steps still open for the study or the accession number.
            found = list(
                candidates.filter(
                    requested_procedure__study_instance_uid=study_uid,
                    status__in=UNFINISHED_STEP_STATES,
                )
            )
            if not found and accession:
                found = list(
                    candidates.filter(
                        requested_procedure__order__accession_number=accession,
                        status__in=UNFINISHED_STEP_STATES,
                    )
                )
            if not found:
                problems.append(
                    "unscheduled: no scheduled step, study or accession number matches"
                    if not accession
                    else f"no open scheduled step for accession number {accession}"
                )
        for step in found:
            steps[step.pk] = step
    return list(steps.values()), problems


def _flag(performed: PerformedProcedureStep, reason: str) -> None:
    performed.needs_reconciliation = True
    reasons = [r for r in (performed.reconciliation_reason, reason) if r]
    performed.reconciliation_reason = "; ".join(reasons)[:255]
    logger.warning("MPPS %s needs reconciliation: %s", performed.sop_instance_uid, reason)


@transaction.atomic
def create_performed_step(
    sop_instance_uid: str,
    attributes: Dataset,
    *,
    calling_ae_title: str = "",
    source_address: str = "",
) -> MppsResult:
    """Record an N-CREATE (PS3.4 F.7.2.1) and start the exam of the steps it names."""
    _require(attributes, CREATE_REQUIRED)
    if _status(attributes) != PerformedProcedureStep.Status.IN_PROGRESS:
        # PS3.4 F.7.2.1.3: only IN PROGRESS may be created.
        raise InvalidAttributeValue(
            "Performed Procedure Step Status must be IN PROGRESS at N-CREATE",
            ("PerformedProcedureStepStatus",),
        )
    for item in attributes.ScheduledStepAttributesSequence:
        if not _text(item, "StudyInstanceUID"):
            keyword = ("StudyInstanceUID",)
            raise (MissingAttribute if "StudyInstanceUID" not in item else MissingAttributeValue)(
                "ScheduledStepAttributesSequence item has no StudyInstanceUID", keyword
            )
    if PerformedProcedureStep.objects.filter(sop_instance_uid=sop_instance_uid).exists():
        raise DuplicateInstance(f"MPPS {sop_instance_uid} exists already")
    zone = _zone(attributes)
    started_at = _moment(
        attributes, "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", zone
    )
    first_item = attributes.ScheduledStepAttributesSequence[0]
    performed = PerformedProcedureStep.objects.create(
        sop_instance_uid=sop_instance_uid,
        status=PerformedProcedureStep.Status.IN_PROGRESS,
        performed_procedure_step_id=_text(attributes, "PerformedProcedureStepID")[:16],
        description=_text(attributes, "PerformedProcedureStepDescription")[:64],
        modality=_text(attributes, "Modality")[:16],
        performed_station_ae_title=_text(attributes, "PerformedStationAETitle")[:16],
        performed_station_name=_text(attributes, "PerformedStationName")[:16],
        performed_location=_text(attributes, "PerformedLocation")[:16],
        started_at=started_at,
        study_instance_uid=_text(first_item, "StudyInstanceUID")[:64],
        accession_number=_text(first_item, "AccessionNumber")[:16],
        patient_id=_text(attributes, "PatientID")[:64],
        patient_name=_text(attributes, "PatientName")[:324],
        performed_series=_series(attributes),
        calling_ae_title=calling_ae_title[:16],
        attributes=_json(attributes),
    )
    steps, problems = _scheduled_steps(attributes)
    performed.scheduled_steps.set(steps)
    for problem in problems:
        _flag(performed, problem)
    if steps:
        try:
            with transaction.atomic():
                ris_services.start_exam(
                    steps,
                    started_at=started_at,
                    performed_station_ae_title=performed.performed_station_ae_title,
                    performed_station_name=performed.performed_station_name,
                    actor_name=calling_ae_title,
                    channel=audit.Channel.DICOM,
                    source_address=source_address,
                )
        except ValidationError as exc:
            _flag(performed, " ".join(exc.messages))
    performed.save()
    audit.record(
        audit.Action.CREATE,
        performed,
        actor_name=calling_ae_title,
        channel=audit.Channel.DICOM,
        source_address=source_address,
        detail=f"MPPS N-CREATE IN PROGRESS on {performed.performed_station_ae_title}"
        + (
            f"; needs reconciliation: {performed.reconciliation_reason}"
            if performed.needs_reconciliation
            else ""
        ),
    )
    return MppsResult(performed)


def _refuse_changes(performed: PerformedProcedureStep, modifications: Dataset) -> None:
    """Refuse an N-SET that changes what only N-CREATE may set (PS3.4 Table F.7.2-1).

    Some modalities send such attributes again unchanged; that is accepted.
    """
    changed = []
    for keyword in NOT_SETTABLE:
        if keyword not in modifications:
            continue
        stored = performed.attributes.get(f"{Tag(keyword):08X}")
        if _element_json(modifications[keyword]) != stored:
            changed.append(keyword)
    if changed:
        raise InvalidAttributeValue(f"N-SET may not change {', '.join(changed)}", tuple(changed))


def _merge(performed: PerformedProcedureStep, modifications: Dataset) -> Dataset:
    """The instance as it will be: the stored attributes with the N-SET's replacing theirs."""
    merged = dict(performed.attributes)
    merged.update(_json(modifications))
    return Dataset.from_json(merged)


def _end_exam(
    performed: PerformedProcedureStep, *, calling_ae_title: str, source_address: str
) -> None:
    """Complete or discontinue the RIS steps this performed step was the last one open for."""
    steps = list(performed.scheduled_steps.all())
    if not steps:
        return
    others = PerformedProcedureStep.objects.filter(scheduled_steps__in=steps).exclude(
        pk=performed.pk
    )
    still_running = set(
        others.filter(status=PerformedProcedureStep.Status.IN_PROGRESS).values_list(
            "scheduled_steps", flat=True
        )
    )
    completed_elsewhere = set(
        others.filter(status=PerformedProcedureStep.Status.COMPLETED).values_list(
            "scheduled_steps", flat=True
        )
    )
    # A step another performed step still works on stays in progress; a step completed
    # by any of its performed steps is completed, else it is discontinued.
    to_complete, to_discontinue = [], []
    for step in steps:
        if step.pk in still_running:
            continue
        if performed.status == PerformedProcedureStep.Status.COMPLETED or (
            step.pk in completed_elsewhere
        ):
            to_complete.append(step)
        else:
            to_discontinue.append(step)
    common: dict[str, Any] = {
        "ended_at": performed.ended_at,
        "actor_name": calling_ae_title,
        "channel": audit.Channel.DICOM,
        "source_address": source_address,
    }
    try:
        with transaction.atomic():
            if to_complete:
                ris_services.complete_exam(to_complete, **common)
            if to_discontinue:
                ris_services.discontinue_exam(
                    to_discontinue, reason=performed.discontinuation_reason, **common
                )
    except ValidationError as exc:
        _flag(performed, " ".join(exc.messages))


@transaction.atomic
def update_performed_step(
    sop_instance_uid: str,
    modifications: Dataset,
    *,
    calling_ae_title: str = "",
    source_address: str = "",
) -> MppsResult:
    """Apply an N-SET (PS3.4 F.7.2.2); COMPLETED or DISCONTINUED ends the exam in the RIS."""
    performed = (
        PerformedProcedureStep.objects.select_for_update()
        .filter(sop_instance_uid=sop_instance_uid)
        .first()
    )
    if performed is None:
        raise NoSuchInstance(f"no MPPS {sop_instance_uid}")
    if performed.status != PerformedProcedureStep.Status.IN_PROGRESS:
        raise MayNoLongerBeUpdated(MAY_NO_LONGER_BE_UPDATED)
    _refuse_changes(performed, modifications)
    new_status = performed.status
    if "PerformedProcedureStepStatus" in modifications:
        new_status = _status(modifications)
    merged = _merge(performed, modifications)
    result = MppsResult(performed)
    if new_status in FINAL_STATES:
        # Final state (PS3.4 Table F.7.2-1): the end, and for COMPLETED the series made.
        required = ["PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime"]
        if new_status == PerformedProcedureStep.Status.COMPLETED:
            required.append("PerformedSeriesSequence")
        _require(merged, tuple(required))
        for item in merged.get("PerformedSeriesSequence") or []:
            if not _text(item, "SeriesInstanceUID"):
                raise MissingAttributeValue(
                    "PerformedSeriesSequence item has no SeriesInstanceUID",
                    ("SeriesInstanceUID",),
                )
        ended_at = _moment(
            merged, "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime", _zone(merged)
        )
        if ended_at < performed.started_at:
            result.warnings.append(
                ("PerformedProcedureStepEndDate", "the step ends before it started")
            )
        performed.ended_at = ended_at
    performed.status = new_status
    performed.attributes = _json(merged)
    performed.description = _text(merged, "PerformedProcedureStepDescription")[:64]
    performed.performed_series = _series(merged)
    if new_status == PerformedProcedureStep.Status.DISCONTINUED:
        performed.discontinuation_reason = _discontinuation_reason(merged)
    if new_status in FINAL_STATES:
        _end_exam(performed, calling_ae_title=calling_ae_title, source_address=source_address)
    performed.save()
    audit.record(
        audit.Action.UPDATE,
        performed,
        actor_name=calling_ae_title,
        channel=audit.Channel.DICOM,
        source_address=source_address,
        detail=f"MPPS N-SET {performed.get_status_display()}"
        + (f": {performed.discontinuation_reason}" if performed.discontinuation_reason else ""),
    )
    return result
