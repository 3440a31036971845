"""Writes of reporting: claim a study, write, dictate, transcribe and sign its report.

Only the radiologist holding the active claim on a study changes its report; a final
report is locked, and what comes after is an addendum, signed on its own. Every change
is audited, and each signature hands the report to `reporting.distribution`.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from core import audit, roles
from core.permissions import can
from pacs.models import Study
from reporting import default_templates, distribution
from reporting.models import Addendum, Dictation, ReadingClaim, Report, ReportTemplate
from ris import services as ris_services
from ris.models import ProcedureType

# The largest recording accepted: about an hour of Opus at 64 kbit/s.
DICTATION_MAX_BYTES = 32 * 1024 * 1024
DICTATION_FOLDER = "dictation"
DICTATION_EXTENSIONS = {
    "audio/webm": "webm",
    "audio/ogg": "ogg",
    "audio/mp4": "m4a",
    "audio/mpeg": "mp3",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
}
TEXT_FIELDS = ("clinical_history", "technique", "findings", "impression", "recommendations")


class ClaimRefused(ValidationError):
    """Someone else reads the study, or this person holds no claim on it."""


class ReportLocked(ValidationError):
    """The report is final: its text never changes; add an addendum instead."""


class SignatureRefused(ValidationError):
    """The password given to sign did not match."""


@dataclass(frozen=True)
class ReportText:
    """The editable sections of a report; None leaves a section as it is."""

    clinical_history: str | None = None
    technique: str | None = None
    findings: str | None = None
    impression: str | None = None
    recommendations: str | None = None

    def changes(self, report: Report) -> list[str]:
        """Apply the sections given to REPORT; return the names of those that changed."""
        changed = []
        for name in TEXT_FIELDS:
            value = getattr(self, name)
            if value is not None and value != getattr(report, name):
                setattr(report, name, value)
                changed.append(name)
        return changed


def _record(action: str, target: Any, actor: User, source_address: str, detail: str) -> None:
    audit.record(
        action,
        target,
        actor=actor,
        channel=audit.Channel.WEB,
        source_address=source_address,
        detail=detail,
    )


def claim_duration() -> dt.timedelta:
    return dt.timedelta(minutes=settings.READING_CLAIM_MINUTES)


def _expire_claims(study_id: int, now: dt.datetime) -> None:
    ReadingClaim.objects.filter(
        study_id=study_id, released_at__isnull=True, expires_at__lte=now
    ).update(released_at=now, ended=ReadingClaim.Ended.EXPIRED)


def _lock_study(study: Study) -> Study:
    """Lock STUDY's row: claims on one study are taken one at a time."""
    return Study.objects.select_for_update().get(pk=study.pk)


def _final_report(study: Study) -> Report | None:
    return Report.objects.filter(
        study=study, status__in=(Report.Status.FINAL, Report.Status.AMENDED)
    ).first()


def _refuse_held(claim: ReadingClaim) -> ClaimRefused:
    holder = claim.radiologist.get_full_name() or claim.radiologist.get_username()
    until = timezone.localtime(claim.expires_at)
    return ClaimRefused(
        f"{holder} is reading this study (claimed until {until:%H:%M}); it cannot be claimed too."
    )


@transaction.atomic
def claim_study(study: Study, radiologist: User, *, source_address: str = "") -> ReadingClaim:
    """Claim STUDY for RADIOLOGIST to read; refused while another holds a live claim."""
    if not can(radiologist, "reporting.sign_report"):
        raise PermissionDenied("Only radiologists claim studies to read.")
    locked = _lock_study(study)
    if locked.requested_procedure_id is None:
        raise ClaimRefused("This study is not matched to an order yet; reconcile it first.")
    if _final_report(locked) is not None:
        raise ClaimRefused("This study's report is final; add an addendum instead.")
    now = timezone.now()
    _expire_claims(locked.pk, now)
    held = (
        ReadingClaim.objects.filter(study=locked, released_at__isnull=True)
        .select_related("radiologist")
        .first()
    )
    if held is not None:
        if held.radiologist_id != radiologist.pk:
            raise _refuse_held(held)
        held.expires_at = now + claim_duration()
        held.save(update_fields=["expires_at"])
        return held
    try:
        with transaction.atomic():
            claim = ReadingClaim.objects.create(
                study=locked,
                radiologist=radiologist,
                claimed_at=now,
                expires_at=now + claim_duration(),
            )
    except IntegrityError as exc:  # the constraint, should a lock ever be bypassed
        raise ClaimRefused("Another radiologist claimed this study just now.") from exc
    _record(audit.Action.CREATE, claim, radiologist, source_address, "claimed for reading")
    return claim


def _end_claim(claim: ReadingClaim, ended: str, now: dt.datetime) -> None:
    claim.released_at = now
    claim.ended = ended
    claim.save(update_fields=["released_at", "ended"])


@transaction.atomic
def release_claim(study: Study, user: User, *, source_address: str = "") -> None:
    """End USER's claim on STUDY (an administrator may end anyone's)."""
    locked = _lock_study(study)
    now = timezone.now()
    _expire_claims(locked.pk, now)
    claim = ReadingClaim.objects.filter(study=locked, released_at__isnull=True).first()
    if claim is None:
        return
    if claim.radiologist_id != user.pk and not can(user, "reporting.reassign_readingclaim"):
        raise ClaimRefused("Only the radiologist reading the study may release it.")
    _end_claim(claim, ReadingClaim.Ended.RELEASED, now)
    _record(audit.Action.UPDATE, claim, user, source_address, "claim released")


@transaction.atomic
def reassign_claim(
    study: Study, radiologist: User, *, actor: User, source_address: str = ""
) -> ReadingClaim:
    """Give STUDY's reading to RADIOLOGIST, ending whoever's claim there is (administrators)."""
    if not can(actor, "reporting.reassign_readingclaim"):
        raise PermissionDenied("Only administrators reassign studies.")
    if not roles.has_role(radiologist, roles.RADIOLOGIST):
        raise ValidationError(f"{radiologist.get_username()} is not a radiologist.")
    locked = _lock_study(study)
    if _final_report(locked) is not None:
        raise ClaimRefused("This study's report is final; add an addendum instead.")
    now = timezone.now()
    _expire_claims(locked.pk, now)
    previous = ReadingClaim.objects.filter(study=locked, released_at__isnull=True).first()
    if previous is not None:
        _end_claim(previous, ReadingClaim.Ended.REASSIGNED, now)
    claim = ReadingClaim.objects.create(
        study=locked, radiologist=radiologist, claimed_at=now, expires_at=now + claim_duration()
    )
    was = f" from user {previous.radiologist_id}" if previous else ""
    _record(
        audit.Action.UPDATE,
        claim,
        actor,
        source_address,
        f"reading reassigned{was} to {radiologist.get_username()}",
    )
    return claim


def _require_claim(report: Report, user: User) -> ReadingClaim:
    """Return USER's live claim on REPORT's study; anyone else is refused."""
    if report.study_id is None:
        raise ClaimRefused("This report has no study to claim.")
    claim = (
        ReadingClaim.objects.filter(
            study_id=report.study_id,
            released_at__isnull=True,
            expires_at__gt=timezone.now(),
        )
        .select_related("radiologist")
        .first()
    )
    if claim is None:
        raise ClaimRefused("Claim the study first: only the radiologist reading it may change it.")
    if claim.radiologist_id != user.pk:
        raise _refuse_held(claim)
    return claim


def _require_unlocked(report: Report) -> None:
    if report.locked:
        raise ReportLocked("This report is final and locked; changes are made by an addendum.")


def choose_template(procedure_type: ProcedureType) -> ReportTemplate | None:
    """The template of PROCEDURE_TYPE, else of its modality and body part, else its modality."""
    templates = ReportTemplate.objects.filter(active=True)
    exact = templates.filter(procedure_type=procedure_type).first()
    if exact is not None:
        return exact
    by_modality = templates.filter(
        procedure_type__isnull=True, modality__iexact=procedure_type.modality
    )
    if procedure_type.body_part:
        by_part = by_modality.filter(body_part__iexact=procedure_type.body_part).first()
        if by_part is not None:
            return by_part
    return by_modality.filter(body_part="").first()


@transaction.atomic
def load_default_templates() -> int:
    """Add the default template of each modality that has none of its own; return how many."""
    added = 0
    for modality, default in default_templates.DEFAULTS.items():
        if ReportTemplate.objects.filter(modality=modality, procedure_type=None).exists():
            continue
        ReportTemplate.objects.create(
            name=default.name,
            modality=modality,
            technique=default.technique,
            findings=default.findings,
            impression=default.impression,
            recommendations=default_templates.RECOMMENDATIONS,
        )
        added += 1
    return added


@transaction.atomic
def start_report(study: Study, radiologist: User, *, source_address: str = "") -> Report:
    """Return STUDY's report, creating it from the chosen template; the claimant only."""
    locked = _lock_study(study)
    existing = Report.objects.filter(study=locked).first()
    if existing is not None:
        if not existing.locked:
            _require_claim(existing, radiologist)
        return existing
    if locked.requested_procedure_id is None:
        raise ClaimRefused("This study is not matched to an order yet; reconcile it first.")
    requested = locked.requested_procedure
    assert requested is not None
    report = Report(order=requested.order, study=locked, author=radiologist)
    _require_claim(report, radiologist)
    template = choose_template(requested.procedure_type)
    report.clinical_history = requested.order.reason
    if template is not None:
        report.template = template
        report.technique = template.technique
        report.findings = template.findings
        report.impression = template.impression
        report.recommendations = template.recommendations
    report.save()
    detail = f"started from template {template.name}" if template else "started"
    _record(audit.Action.CREATE, report, radiologist, source_address, detail)
    return report


def _locked_report(report: Report) -> Report:
    return (
        Report.objects.select_for_update(of=("self",))
        .select_related("order", "study__requested_procedure")
        .get(pk=report.pk)
    )


@transaction.atomic
def save_draft(
    report: Report, radiologist: User, text: ReportText, *, source_address: str = ""
) -> Report:
    """Save the sections edited by the claimant (autosave); the claim lasts on while they work."""
    locked = _locked_report(report)
    _require_unlocked(locked)
    claim = _require_claim(locked, radiologist)
    changed = text.changes(locked)
    if changed:
        locked.save(update_fields=[*changed, "updated_at"])
        _record(
            audit.Action.UPDATE, locked, radiologist, source_address, f"draft: {', '.join(changed)}"
        )
    claim.expires_at = timezone.now() + claim_duration()
    claim.save(update_fields=["expires_at"])
    return locked


def dictation_root() -> Path:
    return Path(settings.STORAGE_DIR) / DICTATION_FOLDER


def _write_durably(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


@transaction.atomic
def attach_dictation(
    report: Report,
    radiologist: User,
    data: bytes,
    content_type: str,
    *,
    duration_seconds: float | None = None,
    source_address: str = "",
) -> Dictation:
    """Store a recording for REPORT and put the report in the transcription queue."""
    locked = _locked_report(report)
    _require_unlocked(locked)
    _require_claim(locked, radiologist)
    media_type = content_type.split(";")[0].strip().lower()
    extension = DICTATION_EXTENSIONS.get(media_type)
    if extension is None:
        raise ValidationError(f"{media_type or 'This file'} is not a supported audio type.")
    if not data:
        raise ValidationError("The recording is empty.")
    if len(data) > DICTATION_MAX_BYTES:
        raise ValidationError(f"The recording is larger than {DICTATION_MAX_BYTES // 2**20} MB.")
    relative = f"{locked.pk}/{uuid.uuid4().hex}.{extension}"
    _write_durably(dictation_root() / relative, data)
    dictation = Dictation.objects.create(
        report=locked,
        file_path=relative,
        content_type=media_type,
        size=len(data),
        duration_seconds=duration_seconds,
        uploaded_by=radiologist,
    )
    locked.transcription = Report.Transcription.DICTATED
    locked.save(update_fields=["transcription", "updated_at"])
    _record(audit.Action.CREATE, dictation, radiologist, source_address, f"{len(data)} bytes")
    return dictation


@transaction.atomic
def submit_transcription(
    report: Report, transcriptionist: User, text: ReportText, *, source_address: str = ""
) -> Report:
    """Save the typed text of a dictation and hand the report back to its radiologist."""
    if not can(transcriptionist, "reporting.transcribe_report"):
        raise PermissionDenied("Only transcriptionists type dictations.")
    locked = _locked_report(report)
    _require_unlocked(locked)
    if locked.transcription != Report.Transcription.DICTATED:
        raise ValidationError("This report is not waiting for transcription.")
    changed = text.changes(locked)
    locked.transcription = Report.Transcription.TRANSCRIBED
    locked.transcribed_by = transcriptionist
    locked.transcribed_at = timezone.now()
    locked.save()
    detail = f"transcribed: {', '.join(changed) or 'no change'}"
    _record(audit.Action.UPDATE, locked, transcriptionist, source_address, detail)
    return locked


def _check_password(user: User, password: str, target: Any, source_address: str) -> None:
    """Ask for the password again before a signature; a wrong one is refused and audited."""
    if not user.check_password(password):
        audit.record(
            audit.Action.DENIED,
            target,
            actor=user,
            channel=audit.Channel.WEB,
            source_address=source_address,
            outcome=audit.Outcome.FAILURE,
            detail="signature refused: wrong password",
        )
        raise SignatureRefused("The password is not correct; nothing was signed.")


def _requested_uid(report: Report) -> str:
    """The Study Instance UID the RIS knows REPORT's study by (its requested procedure's)."""
    study = report.study
    assert study is not None
    requested = study.requested_procedure
    return requested.study_instance_uid if requested is not None else study.study_instance_uid


def sign_report(
    report: Report, user: User, password: str, *, final: bool, source_address: str = ""
) -> Report:
    """Sign REPORT preliminary or final with USER's password; final locks its text."""
    if not can(user, "reporting.sign_report"):
        raise PermissionDenied("Only radiologists sign reports.")
    _check_password(user, password, report, source_address)
    return _sign(report, user, final=final, source_address=source_address)


@transaction.atomic
def _sign(report: Report, user: User, *, final: bool, source_address: str) -> Report:
    locked = _locked_report(report)
    _require_unlocked(locked)
    claim = _require_claim(locked, user)
    if not (locked.findings.strip() or locked.impression.strip()):
        raise ValidationError("Write the findings or the impression before signing.")
    now = timezone.now()
    locked.signed_by = user
    locked.signed_at = now
    if locked.transcription == Report.Transcription.TRANSCRIBED:
        locked.transcription = Report.Transcription.VERIFIED
    if final:
        locked.status = Report.Status.FINAL
        locked.finalized_at = now
        locked.final_text = locked.main_text
    else:
        locked.status = Report.Status.PRELIMINARY
        locked.preliminary_at = locked.preliminary_at or now
    locked.save()
    ris_services.mark_reported(
        _requested_uid(locked), final=final, actor=user, source_address=source_address
    )
    # Signed, the study goes back to the list (preliminary) or leaves it (final).
    _end_claim(claim, ReadingClaim.Ended.SIGNED, now)
    _record(
        audit.Action.UPDATE,
        locked,
        user,
        source_address,
        f"signed {'final' if final else 'preliminary'}",
    )
    distribution.report_signed(locked)
    return locked


@transaction.atomic
def add_addendum(
    report: Report, radiologist: User, text: str, *, source_address: str = ""
) -> Addendum:
    """Write an addendum to a final report; it counts once signed."""
    if not can(radiologist, "reporting.sign_report"):
        raise PermissionDenied("Only radiologists write addenda.")
    locked = _locked_report(report)
    if not locked.locked:
        raise ValidationError("Only a final report takes addenda; edit this one instead.")
    if not text.strip():
        raise ValidationError("An addendum needs text.")
    addendum = Addendum.objects.create(report=locked, text=text.strip(), author=radiologist)
    _record(audit.Action.CREATE, addendum, radiologist, source_address, "addendum written")
    return addendum


def sign_addendum(
    addendum: Addendum, user: User, password: str, *, source_address: str = ""
) -> Addendum:
    """Sign ADDENDUM with USER's password (its author only); the report becomes amended."""
    if addendum.author_id != user.pk:
        raise PermissionDenied("Only the author of an addendum signs it.")
    _check_password(user, password, addendum, source_address)
    return _sign_addendum(addendum, user, source_address)


@transaction.atomic
def _sign_addendum(addendum: Addendum, user: User, source_address: str) -> Addendum:
    locked = Addendum.objects.select_for_update().get(pk=addendum.pk)
    if locked.signed_at is not None:
        raise ValidationError("This addendum is already signed.")
    report = _locked_report(locked.report)
    now = timezone.now()
    locked.signed_by = user
    locked.signed_at = now
    locked.save(update_fields=["signed_by", "signed_at"])
    report.status = Report.Status.AMENDED
    report.save(update_fields=["status", "updated_at"])
    _record(audit.Action.UPDATE, locked, user, source_address, "addendum signed; report amended")
    distribution.report_signed(report)
    return locked


@transaction.atomic
def flag_critical(report: Report, radiologist: User, *, source_address: str = "") -> Report:
    """Mark REPORT as holding a critical finding, for the referring team to acknowledge."""
    if not can(radiologist, "reporting.sign_report"):
        raise PermissionDenied("Only radiologists flag critical findings.")
    locked = _locked_report(report)
    if not locked.locked:
        _require_claim(locked, radiologist)
    if locked.critical and locked.critical_acknowledged_at is None:
        return locked
    locked.critical = True
    locked.critical_flagged_by = radiologist
    locked.critical_flagged_at = timezone.now()
    locked.critical_acknowledged_by = None
    locked.critical_acknowledged_at = None
    locked.save()
    _record(audit.Action.UPDATE, locked, radiologist, source_address, "critical finding flagged")
    return locked


def may_acknowledge(user: User, report: Report) -> bool:
    """The referring team (a grant on the order) or an administrator acknowledge."""
    return roles.has_role(user, roles.ADMINISTRATOR) or user.has_perm(
        "ris.view_order", report.order
    )


@transaction.atomic
def acknowledge_critical(report: Report, user: User, *, source_address: str = "") -> Report:
    """Record that USER of the referring team took note of REPORT's critical finding."""
    locked = _locked_report(report)
    if not may_acknowledge(user, locked):
        raise PermissionDenied("Only the referring team acknowledges this finding.")
    if not locked.critical:
        raise ValidationError("This report has no critical finding.")
    if locked.critical_acknowledged_at is not None:
        return locked
    locked.critical_acknowledged_by = user
    locked.critical_acknowledged_at = timezone.now()
    locked.save(
        update_fields=["critical_acknowledged_by", "critical_acknowledged_at", "updated_at"]
    )
    _record(audit.Action.UPDATE, locked, user, source_address, "critical finding acknowledged")
    return locked
