"""Reconciliation: match a received study to its order, or queue it for a person.

IHE Scheduled Workflow and Patient Information Reconciliation. The study is looked up by
StudyInstanceUID (assigned by the RIS with the order), then by AccessionNumber; the
header's patient identity is compared with the order's patient. Identity that differs
only in form (name case and spacing, missing values) is coerced to the RIS values;
anything else, or no order, becomes a ReconciliationItem. Fixes rewrite the index copies
at once and the stored headers through a queued HeaderRewrite (pacs.header_rewrite).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core import audit
from pacs import signals, tasks
from pacs.dicom_header import InstanceHeader
from pacs.models import HeaderRewrite, ReconciliationItem, Study
from ris import services as ris_services
from ris.billing import services as billing
from ris.billing.models import Charge
from ris.models import (
    Order,
    Patient,
    PatientIdentifier,
    ProcedureType,
    RequestedProcedure,
    ScheduledProcedureStep,
)

logger = logging.getLogger(__name__)

# ReasonForTheAttributeModification (0400,0565), PS3.3 C.12.1.1.1.
COERCE = "COERCE"
CORRECT = "CORRECT"

MATCH = "match"
FORM = "form"  # differs only in form: coerced
MISMATCH = "mismatch"

IDENTITY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
)

# Index copy field of each identity attribute.
STUDY_FIELDS = {
    "PatientName": "patient_name",
    "PatientID": "dicom_patient_id",
    "IssuerOfPatientID": "issuer_of_patient_id",
    "PatientBirthDate": "patient_birth_date",
    "PatientSex": "patient_sex",
    "AccessionNumber": "accession_number",
}


@dataclass(frozen=True)
class Comparison:
    verdict: str
    # keyword -> (received, expected, verdict) for every attribute that is not equal
    differences: dict[str, tuple[str, str, str]]

    def described(self) -> str:
        return "; ".join(
            f"{keyword}: received {received or '(empty)'!r}, order has {expected or '(empty)'!r}"
            for keyword, (received, expected, verdict) in self.differences.items()
            if verdict == MISMATCH
        )


def _da(value: dt.date | None) -> str:
    return value.strftime("%Y%m%d") if value else ""


def identity_of_header(header: InstanceHeader) -> dict[str, str]:
    return {
        "PatientName": header.patient_name,
        "PatientID": header.patient_id,
        "IssuerOfPatientID": header.issuer_of_patient_id,
        "PatientBirthDate": _da(header.patient_birth_date),
        "PatientSex": header.patient_sex,
        "AccessionNumber": header.accession_number,
    }


def identity_of_study(study: Study) -> dict[str, str]:
    return {
        "PatientName": study.patient_name,
        "PatientID": study.dicom_patient_id,
        "IssuerOfPatientID": study.issuer_of_patient_id,
        "PatientBirthDate": _da(study.patient_birth_date),
        "PatientSex": study.patient_sex,
        "AccessionNumber": study.accession_number,
    }


def _identifier_for(patient: Patient, issuer: str) -> PatientIdentifier | None:
    """The patient's identifier from ISSUER if it has one, else its first own one."""
    identifiers = sorted(
        PatientIdentifier.objects.filter(patient=patient).select_related("issuer"),
        key=lambda i: (i.issuer.namespace_id != issuer, i.is_alias, i.pk),
    )
    return identifiers[0] if identifiers else None


def identity_of_patient(
    patient: Patient, *, issuer: str = "", accession_number: str = ""
) -> dict[str, str]:
    """The identity the RIS holds for PATIENT, with its PatientID from ISSUER when it has one."""
    identifier = _identifier_for(patient, issuer or settings.DICOM_DEFAULT_ISSUER)
    return {
        "PatientName": patient.dicom_name,
        "PatientID": identifier.value if identifier else "",
        "IssuerOfPatientID": identifier.issuer.namespace_id if identifier else "",
        "PatientBirthDate": _da(patient.birth_date),
        "PatientSex": "" if patient.sex == "U" else patient.sex,
        "AccessionNumber": accession_number,
    }


def expected_identity(requested: RequestedProcedure, issuer: str = "") -> dict[str, str]:
    order = requested.order
    patient = ris_services.resolve_patient(order.patient)
    return identity_of_patient(patient, issuer=issuer, accession_number=order.accession_number)


def _pn_form(value: str) -> str:
    """A Patient's Name reduced to its letters: case, spaces and trailing carets ignored."""
    alphabetic = value.split("=", 1)[0]
    parts = [re.sub(r"\s+", " ", part).strip().upper() for part in alphabetic.split("^")]
    return "^".join(parts).rstrip("^")


def _patient_holds(patient: Patient, value: str, issuer: str) -> bool:
    identifiers = PatientIdentifier.objects.filter(patient=patient, value=value.strip())
    if issuer:
        identifiers = identifiers.filter(issuer__namespace_id=issuer.strip())
    return identifiers.exists()


def compare(received: dict[str, str], expected: dict[str, str], patient: Patient) -> Comparison:
    """Compare a header identity with the order's; PATIENT is the order's patient."""
    differences: dict[str, tuple[str, str, str]] = {}
    for keyword in IDENTITY_KEYWORDS:
        got, want = received.get(keyword, "").strip(), expected.get(keyword, "").strip()
        if got == want:
            continue
        if not got:
            verdict = FORM  # missing: filled in from the RIS
        elif not want:
            verdict = MATCH if keyword != "PatientID" else MISMATCH  # nothing to compare with
        elif keyword == "PatientName":
            verdict = FORM if _pn_form(got) == _pn_form(want) else MISMATCH
        elif keyword == "PatientID":
            # Any identifier of the patient (an alias after a merge too) names the same person.
            issuer = received.get("IssuerOfPatientID", "")
            verdict = FORM if _patient_holds(patient, got, issuer) else MISMATCH
        elif keyword == "IssuerOfPatientID":
            verdict = FORM if received.get("PatientID") != expected.get("PatientID") else MISMATCH
            if verdict == FORM and not _patient_holds(patient, received.get("PatientID", ""), got):
                verdict = MISMATCH
        elif keyword == "PatientSex":
            verdict = FORM if got.upper() == want.upper() else MISMATCH
        else:
            verdict = MISMATCH
        if verdict != MATCH:
            differences[keyword] = (got, want, verdict)
    if any(verdict == MISMATCH for _, _, verdict in differences.values()):
        return Comparison(MISMATCH, differences)
    return Comparison(FORM if differences else MATCH, differences)


def find_requested_procedure(
    study_instance_uid: str, accession_number: str
) -> RequestedProcedure | None:
    """The order's requested procedure for this study: by StudyInstanceUID, then AccessionNumber."""
    related = RequestedProcedure.objects.select_related("order__patient")
    found = related.filter(study_instance_uid=study_instance_uid).first()
    if found is not None or not accession_number.strip():
        return found
    # Order has no issuer of accession number: the accession is unique in this RIS.
    candidates = list(
        related.filter(order__accession_number=accession_number.strip())
        .exclude(status=RequestedProcedure.Status.CANCELLED)
        .order_by("pk")
    )
    if not candidates:
        return None
    unlinked = [rp for rp in candidates if not rp.studies.exists()]
    return (unlinked or candidates)[0]


def _open_item(
    study: Study,
    reason: str,
    *,
    received: dict[str, str],
    requested: RequestedProcedure | None = None,
    expected: dict[str, str] | None = None,
    detail: str = "",
) -> ReconciliationItem:
    item, created = ReconciliationItem.objects.get_or_create(
        study=study,
        status=ReconciliationItem.Status.OPEN,
        defaults={
            "reason": reason,
            "requested_procedure": requested,
            "received": received,
            "expected": expected or {},
            "detail": detail,
        },
    )
    if created:
        audit.record(
            audit.Action.CREATE,
            item,
            channel=audit.Channel.SYSTEM,
            detail=f"reconciliation queue: {item.get_reason_display()}; {detail}".rstrip("; "),
        )
    return item


def queue_header_rewrite(study: Study, reason: str, *, delay: float | None = None) -> None:
    """Have STUDY's stored headers rewritten from its index copies.

    With no DELAY the task is sent once this transaction commits; with one (a study still
    arriving: the ingest hook) the beat sweep sends it when it is due.
    """
    due = timezone.now() + dt.timedelta(seconds=delay or 0)
    HeaderRewrite.objects.update_or_create(study=study, defaults={"reason": reason, "due_at": due})
    if delay is None:
        study_id = study.pk
        transaction.on_commit(lambda: tasks.rewrite_study_headers.delay(study_id), robust=True)


def _apply_identity(study: Study, identity: dict[str, str]) -> list[str]:
    """Set STUDY's index copies to IDENTITY; return the fields changed (not saved)."""
    changed = []
    for keyword, field_name in STUDY_FIELDS.items():
        value: Any = identity.get(keyword, "")
        if keyword == "PatientBirthDate":
            value = dt.datetime.strptime(value, "%Y%m%d").date() if value else None  # noqa: DTZ007
        if getattr(study, field_name) != value:
            setattr(study, field_name, value)
            changed.append(field_name)
    if "patient_name" in changed:
        study.patient_name_match = study.patient_name.upper()
        changed.append("patient_name_match")
    return changed


def _coerced(received: dict[str, str], expected: dict[str, str]) -> dict[str, str]:
    """RECEIVED with every value the RIS holds put in its place."""
    return {
        keyword: expected.get(keyword) or received.get(keyword, "") for keyword in IDENTITY_KEYWORDS
    }


def _link(
    study: Study,
    requested: RequestedProcedure,
    identity: dict[str, str],
    reason: str,
    *,
    delay: float | None,
    actor: Any = None,
    source_address: str = "",
    channel: str = audit.Channel.SYSTEM,
) -> None:
    """Link STUDY to REQUESTED, its patient and IDENTITY; queue a header rewrite if needed."""
    study.requested_procedure = requested
    study.patient = ris_services.resolve_patient(requested.order.patient)
    changed = _apply_identity(study, identity)
    study.save(update_fields=["requested_procedure", "patient", *changed, "updated_at"])
    ris_services.mark_images_received(
        requested,
        study_instance_uid=study.study_instance_uid,
        actor=actor,
        channel=channel,
        source_address=source_address,
    )
    if changed:
        queue_header_rewrite(study, reason, delay=delay)


def reconcile_new_study(study_id: int, header: InstanceHeader) -> str:
    """Match a study just created by ingest to its order; return MATCH, FORM or MISMATCH."""
    with transaction.atomic():
        study = Study.objects.select_for_update().get(pk=study_id)
        received = identity_of_header(header)
        requested = find_requested_procedure(study.study_instance_uid, study.accession_number)
        if requested is None:
            _open_item(study, ReconciliationItem.Reason.NO_ORDER, received=received)
            return MISMATCH
        expected = expected_identity(requested, header.issuer_of_patient_id)
        if requested.status == RequestedProcedure.Status.CANCELLED:
            _open_item(
                study,
                ReconciliationItem.Reason.ORDER_CANCELLED,
                received=received,
                requested=requested,
                expected=expected,
                detail=f"order {requested.order.accession_number} is cancelled",
            )
            return MISMATCH
        comparison = compare(
            received, expected, ris_services.resolve_patient(requested.order.patient)
        )
        if comparison.verdict == MISMATCH:
            _open_item(
                study,
                ReconciliationItem.Reason.PATIENT_MISMATCH,
                received=received,
                requested=requested,
                expected=expected,
                detail=comparison.described(),
            )
            return MISMATCH
        _link(
            study,
            requested,
            _coerced(received, expected),
            COERCE,
            delay=settings.RECONCILIATION_REWRITE_DELAY,
        )
        return comparison.verdict


def recheck_new_series(study_id: int, header: InstanceHeader) -> str:
    """A new series arrived for a known study: check its identity against the study's."""
    with transaction.atomic():
        study = Study.objects.select_for_update().get(pk=study_id)
        if ReconciliationItem.objects.filter(
            study=study, status=ReconciliationItem.Status.OPEN
        ).exists():
            return MISMATCH  # waiting for a person already
        if study.requested_procedure is None:
            return MATCH  # resolved by hand (assigned or rejected): nothing to compare with
        received = identity_of_header(header)
        expected = identity_of_study(study)
        comparison = compare(received, expected, study.patient)
        if comparison.verdict == MISMATCH:
            _open_item(
                study,
                ReconciliationItem.Reason.SERIES_MISMATCH,
                received=received,
                requested=study.requested_procedure,
                expected=expected,
                detail=f"series {header.series_instance_uid}: {comparison.described()}",
            )
        elif comparison.verdict == FORM:
            queue_header_rewrite(study, COERCE, delay=settings.RECONCILIATION_REWRITE_DELAY)
        return comparison.verdict


def after_index(study_id: int, header: InstanceHeader, *, new_study: bool) -> None:
    """The ingest hook: once per new study, once per new series. Never fails the ingest."""
    try:
        if new_study:
            reconcile_new_study(study_id, header)
        else:
            recheck_new_series(study_id, header)
    except Exception:
        logger.exception("cannot reconcile study %s", study_id)


# The queue's actions: each resolves the item, fixes the index, queues the file rewrite.


def _locked_open(item: ReconciliationItem) -> ReconciliationItem:
    locked = ReconciliationItem.objects.select_for_update().select_related("study").get(pk=item.pk)
    if locked.status != ReconciliationItem.Status.OPEN:
        raise ValueError("This item was already dealt with.")
    return locked


def _snapshot(study: Study, requested: RequestedProcedure | None = None) -> dict[str, Any]:
    """What undo needs to put STUDY (and the order it is being linked to) back."""
    return {
        "patient": study.patient_id,
        "requested_procedure": study.requested_procedure_id,
        "identity": identity_of_study(study),
        "target_procedure": requested.pk if requested else None,
        "target_status": requested.status if requested else None,
        "target_study_instance_uid": requested.study_instance_uid if requested else None,
    }


def _resolve(
    item: ReconciliationItem,
    status: str,
    resolution: str,
    detail: str,
    *,
    actor: Any,
    source_address: str,
    before: dict[str, Any],
) -> None:
    item.status = status
    item.resolution = resolution
    item.resolved_by = actor
    item.resolved_at = timezone.now()
    item.before = before
    item.save(update_fields=["status", "resolution", "resolved_by", "resolved_at", "before"])
    audit.record(
        audit.Action.UPDATE,
        item,
        actor=actor,
        channel=audit.Channel.WEB,
        source_address=source_address,
        detail=f"reconciliation: {detail}",
    )
    audit.record(
        audit.Action.UPDATE,
        item.study,
        actor=actor,
        channel=audit.Channel.WEB,
        source_address=source_address,
        detail=f"reconciliation: {detail}",
    )


@transaction.atomic
def link_to_order(
    item: ReconciliationItem,
    requested: RequestedProcedure,
    *,
    actor: Any,
    source_address: str = "",
) -> ReconciliationItem:
    """Link the item's study to REQUESTED: the headers take the order's patient and accession."""
    item = _locked_open(item)
    study = Study.objects.select_for_update().get(pk=item.study_id)
    if requested.status == RequestedProcedure.Status.CANCELLED:
        raise ValueError(f"Order {requested.order.accession_number} is cancelled.")
    other = Study.objects.filter(requested_procedure=requested).exclude(pk=study.pk).first()
    if other is not None:
        raise ValueError(f"Order {requested.order.accession_number} already has study {other.pk}.")
    before = _snapshot(study, requested)
    _link(
        study,
        requested,
        expected_identity(requested, study.issuer_of_patient_id),
        CORRECT,
        delay=None,
        actor=actor,
        source_address=source_address,
        channel=audit.Channel.WEB,
    )
    item.study = study
    _resolve(
        item,
        ReconciliationItem.Status.RESOLVED,
        ReconciliationItem.Resolution.LINKED,
        f"linked to order {requested.order.accession_number}",
        actor=actor,
        source_address=source_address,
        before=before,
    )
    return item


@transaction.atomic
def assign_to_patient(
    item: ReconciliationItem, patient: Patient, *, actor: Any, source_address: str = ""
) -> ReconciliationItem:
    """Give the item's study to PATIENT, without an order: the headers take that identity."""
    item = _locked_open(item)
    study = Study.objects.select_for_update().get(pk=item.study_id)
    patient = ris_services.resolve_patient(patient)
    before = _snapshot(study)
    identity = identity_of_patient(
        patient, issuer=study.issuer_of_patient_id, accession_number=study.accession_number
    )
    study.patient = patient
    study.requested_procedure = None
    changed = _apply_identity(study, identity)
    study.save(update_fields=["patient", "requested_procedure", *changed, "updated_at"])
    if changed:
        queue_header_rewrite(study, CORRECT)
    item.study = study
    _resolve(
        item,
        ReconciliationItem.Status.RESOLVED,
        ReconciliationItem.Resolution.ASSIGNED,
        f"assigned to patient {patient.pk} ({patient})",
        actor=actor,
        source_address=source_address,
        before=before,
    )
    return item


@transaction.atomic
def mark_unscheduled(
    item: ReconciliationItem,
    procedure_type: ProcedureType,
    *,
    patient: Patient | None = None,
    actor: Any,
    source_address: str = "",
) -> Order:
    """Book an order after the fact for the item's study (its patient, or PATIENT) and link it."""
    locked = _locked_open(item)
    study = locked.study
    accession = study.accession_number
    if not accession or Order.objects.filter(accession_number=accession).exists():
        accession = ""  # a new one is generated
    order = ris_services.book_exam(
        ris_services.BookingInput(
            patient=ris_services.resolve_patient(patient or study.patient),
            procedure_type=procedure_type,
            scheduled_start=timezone.now(),
            accession_number=accession,
            referring_physician_name=study.referring_physician_name[:192],
            reason="unscheduled: images received without an order",
        ),
        actor=actor,
        source_address=source_address,
    )
    requested = order.requested_procedures.get()
    # The exam was performed already: off the worklist, completed, then images received.
    steps = list(ScheduledProcedureStep.objects.filter(requested_procedure=requested))
    performed_at = timezone.now()
    ris_services.start_exam(steps, started_at=performed_at, actor=actor, channel=audit.Channel.WEB)
    ris_services.complete_exam(steps, ended_at=performed_at, actor=actor, channel=audit.Channel.WEB)
    requested.refresh_from_db()
    link_to_order(locked, requested, actor=actor, source_address=source_address)
    locked.refresh_from_db()
    locked.resolution = ReconciliationItem.Resolution.UNSCHEDULED
    locked.save(update_fields=["resolution"])
    return order


@transaction.atomic
def reject(
    item: ReconciliationItem, reason: str, *, actor: Any, source_address: str = ""
) -> ReconciliationItem:
    """Close the item without changing the study (it stays as received)."""
    item = _locked_open(item)
    _resolve(
        item,
        ReconciliationItem.Status.REJECTED,
        ReconciliationItem.Resolution.REJECTED,
        f"rejected: {reason.strip()}" if reason.strip() else "rejected",
        actor=actor,
        source_address=source_address,
        before=_snapshot(item.study),
    )
    return item


def _refuse_if_billed(order: Order) -> list[Charge]:
    """ORDER's pending charges; refused if one was posted to the billing system."""
    charges = list(Charge.objects.filter(order=order).exclude(status=Charge.Status.VOID))
    posted = [charge for charge in charges if charge.status == Charge.Status.POSTED]
    if posted:
        raise signals.UndoRefused(
            f"Order {order.accession_number} was billed (charge {posted[0].pk} posted"
            f" {posted[0].posted_at:%Y-%m-%d}); void the charge in billing first."
        )
    return charges


def _withdraw_order(
    order: Order, pending: list[Charge], *, actor: Any, source_address: str
) -> None:
    """Call off ORDER, booked after the fact: void its unposted charges, then cancel it."""
    reason = "booked after the fact in reconciliation; undone"
    for charge in pending:
        billing.void_charge(charge, reason, actor=actor, source_address=source_address)
    if order.status == Order.Status.CANCELLED:
        return  # called off already (by the placer, say): what undo wants is done
    ris_services.cancel_order(
        order, reason, actor=actor, source_address=source_address, booked_in_error=True
    )


@transaction.atomic
def undo(item: ReconciliationItem, *, actor: Any, source_address: str = "") -> ReconciliationItem:
    """Put the item's study back as it was before its resolution, and reopen the item.

    An order booked after the fact ("mark as unscheduled") is cancelled; refused when that
    would lose work: a report on the study, a reading under way, a posted charge.
    """
    item = ReconciliationItem.objects.select_for_update().select_related("study").get(pk=item.pk)
    if item.status == ReconciliationItem.Status.OPEN:
        raise ValueError("This item is open: there is nothing to undo.")
    if not item.before:
        raise ValueError("This resolution kept no record of the study before it.")
    if (
        ReconciliationItem.objects.filter(
            study_id=item.study_id, status=ReconciliationItem.Status.OPEN
        )
        .exclude(pk=item.pk)
        .exists()
    ):
        raise ValueError("The study has another open item; deal with that one first.")
    study = Study.objects.select_for_update().get(pk=item.study_id)
    before = item.before
    target_id = before.get("target_procedure")
    target = (
        RequestedProcedure.objects.select_related("order").get(pk=target_id) if target_id else None
    )
    booked_after_the_fact = item.resolution == ReconciliationItem.Resolution.UNSCHEDULED
    if booked_after_the_fact and target is None:
        raise ValueError("This resolution kept no record of the order it booked.")
    pending: list[Charge] = []
    if target is not None:
        # Work on the study since (reporting's receiver) refuses before anything changes.
        signals.study_unlinking.send(Study, study=study, requested_procedure=target)
        if booked_after_the_fact:
            pending = _refuse_if_billed(target.order)
    study.patient_id = before["patient"]
    study.requested_procedure_id = before["requested_procedure"]
    changed = _apply_identity(study, before["identity"])
    study.save(update_fields=["patient", "requested_procedure", *changed, "updated_at"])
    if changed:
        queue_header_rewrite(study, CORRECT)
    if target is not None and not Study.objects.filter(requested_procedure=target).exists():
        ris_services.restore_procedure_status(
            target,
            before["target_status"],
            actor=actor,
            source_address=source_address,
            study_instance_uid=before.get("target_study_instance_uid") or "",
        )
    detail = f"reconciliation undone ({item.get_resolution_display()}); item reopened"
    if booked_after_the_fact:
        assert target is not None
        _withdraw_order(target.order, pending, actor=actor, source_address=source_address)
        detail += f"; order {target.order.accession_number} cancelled"
    item.status = ReconciliationItem.Status.OPEN
    item.resolution = ""
    item.resolved_by = None
    item.resolved_at = None
    item.before = {}
    item.save(update_fields=["status", "resolution", "resolved_by", "resolved_at", "before"])
    for target_object in (item, study):
        audit.record(
            audit.Action.UPDATE,
            target_object,
            actor=actor,
            channel=audit.Channel.WEB,
            source_address=source_address,
            detail=detail,
        )
    return item


def follow_merge(survivor: Patient, merged: Patient) -> int:
    """After a merge: studies of MERGED answer with SURVIVOR's identity now; files follow."""
    count = 0
    for study in Study.objects.select_for_update().filter(patient=merged):
        identity = identity_of_patient(
            survivor, issuer=study.issuer_of_patient_id, accession_number=study.accession_number
        )
        study.patient = survivor
        changed = _apply_identity(study, identity)
        study.save(update_fields=["patient", *changed, "updated_at"])
        if changed:
            queue_header_rewrite(study, CORRECT)
            count += 1
    return count
