"""Distribution of a signed report: ORU^R01 to the EMR, the PDF, the PDF stored with the images.

`report_signed` runs inside the signing transaction: the ORU^R01 is written to the HL7
outbox there (it exists exactly when the signature committed), and the PDF is rendered
and stored after the commit by a Celery task (`reporting.tasks.archive_report`). The
task keeps the PDF under STORAGE_DIR/reports/ and stores it in the study as a DICOM
Encapsulated PDF through `pacs.services.ingest_instance`, the same path as C-STORE and
STOW-RS. The instance's UID is derived from the report and its version, so a retried
task finds it stored and adds nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from core import audit, roles
from core.dicom_values import person_name_for_display
from core.permissions import can
from pacs.models import Instance, Study
from pacs.services import REASON_DUPLICATE, IngestError, ingest_instance
from reporting import encapsulated
from reporting.models import Addendum, Report
from reporting.pdf import ReportContent, render_report_pdf
from ris.hl7 import builders, outbox
from ris.models import Patient

logger = logging.getLogger(__name__)

Status = Report.Status

# HL7 table 0123 result status of each signed report status (OBR-25, OBX-11).
RESULT_STATUS = {
    Status.PRELIMINARY: builders.RESULT_PRELIMINARY,
    Status.FINAL: builders.RESULT_FINAL,
    Status.AMENDED: builders.RESULT_CORRECTED,
}
SIGNED_STATUSES = tuple(RESULT_STATUS)
VERIFIED_STATUSES = (Status.FINAL, Status.AMENDED)
REPORTS_FOLDER = "reports"  # under STORAGE_DIR

# Outcomes of `archive_report`.
STORED = "stored"
ALREADY_STORED = "already stored"
NO_STUDY = "no study"
SUPERSEDED = "superseded"

_UNSAFE_PATH_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]")
# Beat's sweep looks this far back for signed versions missing from the archive ...
SWEEP_WINDOW = dt.timedelta(days=7)
# ... leaving the newest to the task queued at their signature.
SWEEP_GRACE = dt.timedelta(minutes=2)


# ---------------------------------------------------------------- the signed version


@dataclass(frozen=True)
class Signature:
    """The latest signature on a report: the report's own, or its latest signed addendum's."""

    status: str
    signed_by: User | None
    signed_at: dt.datetime


def _latest_signed_addendum(report: Report, addenda: list[Addendum] | None) -> Addendum | None:
    if addenda is None:
        return report.addenda.filter(signed_at__isnull=False).order_by("-signed_at", "-pk").first()
    signed = [a for a in addenda if a.signed_at is not None]
    return max(signed, key=lambda a: (a.signed_at, a.pk), default=None)


def latest_signature(report: Report, *, addenda: list[Addendum] | None = None) -> Signature:
    """Return who signed REPORT's current version, and when (ADDENDA: already fetched)."""
    if report.status not in SIGNED_STATUSES or report.signed_at is None:
        raise ValueError(f"report {report.pk} is not signed ({report.status})")
    signed_by, signed_at = report.signed_by, report.signed_at
    if report.status == Status.AMENDED:
        addendum = _latest_signed_addendum(report, addenda)
        if addendum is not None and addendum.signed_at and addendum.signed_at >= signed_at:
            signed_by, signed_at = addendum.signed_by, addendum.signed_at
    return Signature(status=report.status, signed_by=signed_by, signed_at=signed_at)


def version_label(signature: Signature) -> str:
    """Return the name of a signed version: its status and the moment of its signature."""
    moment = signature.signed_at.astimezone(dt.UTC)
    return f"{signature.status}-{moment:%Y%m%d%H%M%S%f}"


def report_version(report: Report) -> str:
    """Return the name of REPORT's current signed version."""
    return version_label(latest_signature(report))


# ---------------------------------------------------------------- on signing


def report_signed(report: Report) -> None:
    """Distribute REPORT's new signed version; call inside the signing transaction."""
    signature = latest_signature(report)
    version = version_label(signature)
    enqueue_oru(report, signature)
    report_id, status = report.pk, report.status

    def archive() -> None:
        from reporting import tasks

        tasks.archive_report.delay(report_id, status, version)

    # robust: a failure to queue (broker down) must not turn a committed signature into
    # an error page; the sweep stores what was missed.
    transaction.on_commit(archive, robust=True)


def enqueue_oru(report: Report, signature: Signature) -> None:
    """Write REPORT's ORU^R01 (status P, F or C) to the outbox for every ORU destination."""
    order = report.order
    study = study_of(report)
    data = outbox.report_data(
        order,
        status=RESULT_STATUS[Status(signature.status)],
        text=report.text,
        interpreter=signature.signed_by,
        reported_at=signature.signed_at,
        observed_at=_study_moment(study) if study else None,
    )
    outbox.enqueue_report(data, patient=order.patient)


def study_of(report: Report) -> Study | None:
    """Return the archived study REPORT is about: its own, or the one matched to its order."""
    if report.study_id is not None:
        return report.study
    return (
        Study.objects.filter(requested_procedure__order_id=report.order_id).order_by("pk").first()
    )


def _study_moment(study: Study) -> dt.datetime | None:
    """Return the study's DICOM date and time as an aware datetime (local time, PS3.5 6.2)."""
    if study.study_date is None:
        return None
    digits = (study.study_time or "").split(".")[0]
    digits = (digits + "000000")[:6] if digits.isdigit() else "000000"
    try:
        clock = dt.time(int(digits[:2]), int(digits[2:4]), int(digits[4:6]))
    except ValueError:
        clock = dt.time()
    return timezone.make_aware(dt.datetime.combine(study.study_date, clock))


# ---------------------------------------------------------------- the PDF


def _primary_identifier(patient: Patient) -> str:
    identifier = (
        patient.identifiers.select_related("issuer").filter(is_alias=False).order_by("id").first()
    )
    return f"{identifier.value} ({identifier.issuer.namespace_id})" if identifier else ""


def _person(user: User | None) -> str:
    if user is None:
        return ""
    return user.get_full_name() or user.get_username()


def report_content(report: Report, signature: Signature | None = None) -> ReportContent:
    """Return what REPORT's PDF shows, for its current version."""
    order = report.order
    patient = order.patient
    study = study_of(report)
    requested = order.requested_procedures.select_related("procedure_type").first()
    procedure = requested.procedure_type if requested else None
    referring = person_name_for_display(order.referring_physician_name) or _person(
        order.referring_physician
    )
    signed_by, signed_at = (signature.signed_by, signature.signed_at) if signature else (None, None)
    return ReportContent(
        institution_name=settings.INSTITUTION_NAME,
        institution_address=settings.INSTITUTION_ADDRESS,
        patient_name=patient.display_name,
        patient_id=_primary_identifier(patient),
        birth_date=patient.birth_date,
        sex=patient.get_sex_display(),
        procedure=f"{procedure.name} ({procedure.code})" if procedure else "",
        accession_number=order.accession_number,
        study_date=study.study_date if study else None,
        referring_physician=referring,
        text=report.text,
        status=report.status,
        status_label=report.get_status_display(),
        signed_by=_person(signed_by),
        signed_at=timezone.localtime(signed_at) if signed_at else None,
    )


def render_pdf(report: Report) -> bytes:
    """Return REPORT as it stands now as a PDF (unsigned drafts too, marked by their status)."""
    signed = report.status in SIGNED_STATUSES and report.signed_at is not None
    signature = latest_signature(report) if signed else None
    return render_report_pdf(report_content(report, signature))


def safe_name(text: str) -> str:
    """Return TEXT usable as a file name: letters, digits, dot, dash and underscore only."""
    return _UNSAFE_PATH_CHARACTERS.sub("_", text).lstrip(".") or "_"


def pdf_path(report: Report, version: str) -> Path:
    """Return where VERSION of REPORT's PDF is kept on disk."""
    accession = safe_name(report.order.accession_number)
    name = safe_name(f"{report.pk}-{version}.pdf")
    return Path(settings.STORAGE_DIR) / REPORTS_FOLDER / accession / name


def _write_durably(path: Path, data: bytes) -> None:
    """Write DATA to PATH through a temporary file, fsynced, then renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


# ---------------------------------------------------------------- stored with the images


def encapsulated_report(
    report: Report, study: Study, signature: Signature, version: str, pdf: bytes
) -> encapsulated.EncapsulatedReport:
    """Return the Encapsulated PDF attributes of VERSION, patient and study as STUDY holds them."""
    numbered = Instance.objects.filter(
        series__series_instance_uid=encapsulated.series_uid(report.pk)
    ).count()
    return encapsulated.EncapsulatedReport(
        report_id=report.pk,
        version=version,
        pdf=pdf,
        verified=signature.status in VERIFIED_STATUSES,
        content_at=timezone.localtime(signature.signed_at),
        study_instance_uid=study.study_instance_uid,
        patient_name=study.patient_name,
        patient_id=study.dicom_patient_id,
        issuer_of_patient_id=study.issuer_of_patient_id,
        patient_birth_date=study.patient_birth_date,
        patient_sex=study.patient_sex,
        study_date=study.study_date,
        study_time=study.study_time,
        study_id=study.study_id,
        accession_number=study.accession_number or report.order.accession_number,
        study_description=study.study_description,
        referring_physician_name=study.referring_physician_name,
        instance_number=numbered + 1,
        institution_name=settings.INSTITUTION_NAME,
    )


@dataclass(frozen=True)
class Archived:
    outcome: str  # STORED, ALREADY_STORED, NO_STUDY or SUPERSEDED
    pdf_path: Path | None = None
    sop_instance_uid: str = ""


def archive_report(report_id: int, status: str, version: str) -> Archived:
    """Keep VERSION of REPORT_ID's PDF on disk and store it in its study; idempotent."""
    report = (
        Report.objects.select_related("order__patient", "study", "signed_by")
        .filter(pk=report_id)
        .first()
    )
    if report is None or report.status != status or report.signed_at is None:
        logger.info("report %s: version %s is no longer current; not stored", report_id, version)
        return Archived(SUPERSEDED)
    signature = latest_signature(report)
    if version_label(signature) != version:
        # Signed again since: the task of the newer version stores that one.
        logger.info("report %s: version %s superseded; not stored", report_id, version)
        return Archived(SUPERSEDED)
    path = pdf_path(report, version)
    sop_instance_uid = encapsulated.instance_uid(report.pk, version)
    if path.exists():
        if Instance.objects.filter(sop_instance_uid=sop_instance_uid).exists():
            return Archived(ALREADY_STORED, path, sop_instance_uid)  # a retry: nothing to do
        pdf = path.read_bytes()  # complete: written under another name, then renamed
    else:
        pdf = render_report_pdf(report_content(report, signature))
        _write_durably(path, pdf)
    study = study_of(report)
    if study is None:
        logger.warning("report %s: no study in the archive; the PDF is kept at %s", report_id, path)
        return Archived(NO_STUDY, path)
    if Instance.objects.filter(sop_instance_uid=sop_instance_uid).exists():
        return Archived(ALREADY_STORED, path, sop_instance_uid)
    dataset = encapsulated.build_dataset(
        encapsulated_report(report, study, signature, version, pdf)
    )
    try:
        result = ingest_instance(
            encapsulated.encode(dataset),
            transfer_syntax=encapsulated.TRANSFER_SYNTAX,
            calling_ae=settings.DICOM_AE_TITLE,
        )
    except IngestError as exc:
        if exc.reason == REASON_DUPLICATE:
            return Archived(ALREADY_STORED, path, sop_instance_uid)
        raise
    if result.duplicate:
        return Archived(ALREADY_STORED, path, sop_instance_uid)
    audit.record(
        audit.Action.CREATE,
        report,
        channel=audit.Channel.SYSTEM,
        actor_name=settings.DICOM_AE_TITLE,
        detail=(
            f"{status} report stored in study {study.study_instance_uid} "
            f"as Encapsulated PDF {sop_instance_uid}"
        ),
    )
    return Archived(STORED, path, sop_instance_uid)


def unarchived_versions(now: dt.datetime | None = None) -> list[tuple[int, str, str]]:
    """Return (report id, status, version) of recent signed versions missing from the archive.

    A task lost with its broker, or one that failed in-process after the commit, leaves
    its version unstored; beat's sweep queues these again. Versions signed in the last
    SWEEP_GRACE are left to the task that is likely still running.
    """
    now = now or timezone.now()
    reports = list(
        Report.objects.filter(
            status__in=SIGNED_STATUSES,
            signed_at__isnull=False,
            study__isnull=False,
            updated_at__gte=now - SWEEP_WINDOW,
        )
        .prefetch_related("addenda__signed_by")
        .select_related("signed_by")
        .order_by("pk")
    )
    wanted: dict[str, tuple[int, str, str]] = {}
    for report in reports:
        addenda = [a for a in report.addenda.all() if a.signed_at is not None]
        signature = latest_signature(report, addenda=addenda)
        if signature.signed_at > now - SWEEP_GRACE:
            continue
        version = version_label(signature)
        wanted[encapsulated.instance_uid(report.pk, version)] = (report.pk, report.status, version)
    stored = set(
        Instance.objects.filter(sop_instance_uid__in=list(wanted)).values_list(
            "sop_instance_uid", flat=True
        )
    )
    return [version for uid, version in wanted.items() if uid not in stored]


# ---------------------------------------------------------------- who may read it


def may_read_reports(user: Any) -> bool:
    """Tell whether USER may open report PDFs at all (which ones: reports_visible_to)."""
    return (
        can(user, "reporting.view_report")
        or roles.has_role(user, roles.REFERRING_PHYSICIAN)
        or roles.has_role(user, roles.PATIENT)
    )
