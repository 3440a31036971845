"""Reporting services: claims, templates, drafts, signing, addenda, critical findings, dictation."""

from __future__ import annotations

import datetime as dt
from io import StringIO
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management import call_command
from django.utils import timezone

from core.models import AuditEvent
from reporting import services
from reporting.default_templates import DEFAULTS
from reporting.models import ReadingClaim, Report, ReportTemplate
from reporting.services import ClaimRefused, ReportLocked, ReportText, SignatureRefused
from ris.models import RequestedProcedure
from tests import factories
from tests.personas import PASSWORD, Personas, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def second_radiologist(personas: Personas) -> Any:
    return make_user("rad2", "radiologist")


def _study(**order_fields: Any) -> Any:
    return factories.received_study(factories.order(**order_fields))


def test_received_study_is_linked_to_its_order(personas: Personas) -> None:
    study = _study()
    assert study.requested_procedure is not None
    assert study.requested_procedure.status == RequestedProcedure.Status.IMAGES_RECEIVED


def _claimed_report(radiologist: Any, **order_fields: Any) -> Report:
    study = _study(**order_fields)
    services.claim_study(study, radiologist)
    return services.start_report(study, radiologist)


def _write(report: Report, radiologist: Any, **sections: str) -> Report:
    text = ReportText(
        **({"findings": "Normal brain.", "impression": "No acute finding."} | sections)
    )
    return services.save_draft(report, radiologist, text)


# ---------------------------------------------------------------- claims


def test_a_second_radiologist_cannot_claim_a_claimed_study(
    personas: Personas, second_radiologist: Any
) -> None:
    study = _study()
    claim = services.claim_study(study, personas.radiologist)
    with pytest.raises(ClaimRefused, match="rad is reading this study"):
        services.claim_study(study, second_radiologist)
    assert ReadingClaim.objects.get(released_at__isnull=True) == claim
    # Claiming again as the holder renews the same claim.
    assert services.claim_study(study, personas.radiologist).pk == claim.pk
    assert AuditEvent.objects.filter(object_type="reporting.readingclaim").count() == 1


def test_only_radiologists_claim(personas: Personas) -> None:
    study = _study()
    for user in (personas.transcriptionist, personas.admin, personas.referring_physician):
        with pytest.raises(PermissionDenied):
            services.claim_study(study, user)


def test_an_expired_claim_lets_another_radiologist_claim(
    personas: Personas, second_radiologist: Any, settings: Any
) -> None:
    settings.READING_CLAIM_MINUTES = 10
    study = _study()
    first = services.claim_study(study, personas.radiologist)
    assert first.expires_at - first.claimed_at == dt.timedelta(minutes=10)
    ReadingClaim.objects.filter(pk=first.pk).update(
        expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    second = services.claim_study(study, second_radiologist)
    first.refresh_from_db()
    assert first.ended == ReadingClaim.Ended.EXPIRED and first.released_at is not None
    assert second.radiologist == second_radiologist


def test_release_frees_the_study_and_only_the_holder_releases(
    personas: Personas, second_radiologist: Any
) -> None:
    study = _study()
    services.claim_study(study, personas.radiologist)
    with pytest.raises(ClaimRefused):
        services.release_claim(study, second_radiologist)
    services.release_claim(study, personas.radiologist)
    assert services.claim_study(study, second_radiologist).radiologist == second_radiologist


def test_an_administrator_reassigns_and_the_new_reader_edits(
    personas: Personas, second_radiologist: Any
) -> None:
    report = _claimed_report(personas.radiologist)
    study = report.study
    assert study is not None
    with pytest.raises(PermissionDenied):
        services.reassign_claim(study, second_radiologist, actor=personas.radiologist)
    with pytest.raises(ValidationError, match="not a radiologist"):
        services.reassign_claim(study, personas.transcriptionist, actor=personas.admin)
    services.reassign_claim(study, second_radiologist, actor=personas.admin)
    old = ReadingClaim.objects.get(radiologist=personas.radiologist)
    assert old.ended == ReadingClaim.Ended.REASSIGNED
    with pytest.raises(ClaimRefused):
        _write(report, personas.radiologist)
    assert _write(report, second_radiologist).findings == "Normal brain."
    assert AuditEvent.objects.filter(actor=personas.admin, detail__contains="reassigned").exists()


def test_the_database_allows_one_active_claim_per_study(personas: Personas) -> None:
    from django.db import IntegrityError, transaction

    study = _study()
    now = timezone.now()
    ReadingClaim.objects.create(
        study=study, radiologist=personas.radiologist, claimed_at=now, expires_at=now
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        ReadingClaim.objects.create(
            study=study, radiologist=personas.radiologist, claimed_at=now, expires_at=now
        )


# ---------------------------------------------------------------- templates and drafts


def test_template_chosen_by_procedure_type_then_modality_and_body_part(personas: Personas) -> None:
    head = factories.procedure("CTHEAD", "CT", body_part="HEAD")
    chest = factories.procedure("CTCHEST", "CT", body_part="CHEST")
    knee = factories.procedure("MRKNEE", "MR", body_part="KNEE")
    by_type = ReportTemplate.objects.create(
        name="CT head", procedure_type=head, findings="Brain parenchyma: normal."
    )
    by_part = ReportTemplate.objects.create(
        name="CT chest", modality="CT", body_part="chest", findings="Lungs: clear."
    )
    ReportTemplate.objects.create(name="CT any", modality="CT", findings="CT.")
    assert services.choose_template(head) == by_type
    assert services.choose_template(chest) == by_part
    assert services.choose_template(knee) is None

    report = _claimed_report(personas.radiologist, procedure_type=chest, reason="Cough, fever.")
    assert report.template == by_part
    assert report.findings == "Lungs: clear."
    assert report.clinical_history == "Cough, fever."


def test_default_templates_fill_in_for_modalities_without_their_own() -> None:
    own = ReportTemplate.objects.create(name="Our MR", modality="MR", findings="Ours.")
    assert services.load_default_templates() == len(DEFAULTS) - 1  # MR keeps its own
    assert services.load_default_templates() == 0  # run again: nothing twice
    assert services.choose_template(factories.procedure("MRKNEE", "MR")) == own
    ct = services.choose_template(factories.procedure("CTHEAD", "CT", body_part="HEAD"))
    assert ct is not None and ct.name == DEFAULTS["CT"].name and "[region]" in ct.technique
    call_command("load_report_templates", stdout=StringIO())
    assert ReportTemplate.objects.filter(procedure_type=None).count() == len(DEFAULTS)


def test_autosave_keeps_the_draft_and_audits_only_changes(
    personas: Personas, second_radiologist: Any
) -> None:
    report = _claimed_report(personas.radiologist)
    _write(report, personas.radiologist, findings="First words.")
    _write(report, personas.radiologist, findings="First words.")  # nothing changed
    report.refresh_from_db()
    assert report.findings == "First words." and report.status == Report.Status.DRAFT
    saves = AuditEvent.objects.filter(object_type="reporting.report", detail__startswith="draft")
    assert saves.count() == 1
    with pytest.raises(ClaimRefused, match="rad is reading"):
        _write(report, second_radiologist)


# ---------------------------------------------------------------- signing


def test_sign_with_a_wrong_password_is_refused_and_audited(personas: Personas) -> None:
    report = _write(_claimed_report(personas.radiologist), personas.radiologist)
    with pytest.raises(SignatureRefused):
        services.sign_report(report, personas.radiologist, "wrong", final=True)
    report.refresh_from_db()
    assert report.status == Report.Status.DRAFT and report.signed_at is None
    assert AuditEvent.objects.filter(
        action=AuditEvent.Action.DENIED, detail__contains="wrong password"
    ).exists()


def test_preliminary_then_final_locks_marks_read_and_releases(
    personas: Personas, second_radiologist: Any
) -> None:
    report = _write(_claimed_report(personas.radiologist), personas.radiologist)
    services.sign_report(report, personas.radiologist, PASSWORD, final=False)
    report.refresh_from_db()
    requested = RequestedProcedure.objects.get(
        study_instance_uid=report.order.requested_procedures.get().study_instance_uid
    )
    assert report.status == Report.Status.PRELIMINARY and report.preliminary_at
    assert requested.status == RequestedProcedure.Status.PRELIMINARY_REPORT
    assert not ReadingClaim.objects.filter(released_at__isnull=True).exists()

    services.claim_study(report.study, personas.radiologist)  # type: ignore[arg-type]
    services.sign_report(report, personas.radiologist, PASSWORD, final=True)
    report.refresh_from_db()
    requested.refresh_from_db()
    assert report.status == Report.Status.FINAL and report.finalized_at
    assert "Normal brain." in report.final_text
    assert requested.status == RequestedProcedure.Status.REPORTED
    with pytest.raises(ReportLocked):
        _write(report, personas.radiologist, findings="Changed.")
    with pytest.raises(ClaimRefused, match="final"):
        services.claim_study(report.study, second_radiologist)  # type: ignore[arg-type]
    report.refresh_from_db()
    assert report.findings == "Normal brain."


def test_only_the_claimant_signs(personas: Personas, second_radiologist: Any) -> None:
    report = _write(_claimed_report(personas.radiologist), personas.radiologist)
    with pytest.raises(ClaimRefused):
        services.sign_report(report, second_radiologist, PASSWORD, final=True)
    with pytest.raises(PermissionDenied):
        services.sign_report(report, personas.transcriptionist, PASSWORD, final=True)


def test_an_empty_report_is_not_signed(personas: Personas) -> None:
    report = _claimed_report(personas.radiologist)
    with pytest.raises(ValidationError, match="findings or the impression"):
        services.sign_report(report, personas.radiologist, PASSWORD, final=True)


def test_signing_hands_the_report_to_distribution(personas: Personas, monkeypatch: Any) -> None:
    sent: list[tuple[int, str]] = []
    monkeypatch.setattr(
        services.distribution,
        "report_signed",
        lambda report: sent.append((report.pk, report.status)),
    )
    report = _write(_claimed_report(personas.radiologist), personas.radiologist)
    services.sign_report(report, personas.radiologist, PASSWORD, final=True)
    addendum = services.add_addendum(report, personas.radiologist, "Also a sinus cyst.")
    services.sign_addendum(addendum, personas.radiologist, PASSWORD)
    assert sent == [(report.pk, "final"), (report.pk, "amended")]


# ---------------------------------------------------------------- addenda


def test_addendum_after_final_amends_and_each_is_signed(
    personas: Personas, second_radiologist: Any
) -> None:
    report = _write(_claimed_report(personas.radiologist), personas.radiologist)
    with pytest.raises(ValidationError, match="Only a final report"):
        services.add_addendum(report, personas.radiologist, "Too early.")
    services.sign_report(report, personas.radiologist, PASSWORD, final=True)

    first = services.add_addendum(report, second_radiologist, "Small sinus cyst.")
    with pytest.raises(PermissionDenied):
        services.sign_addendum(first, personas.radiologist, PASSWORD)  # not its author
    with pytest.raises(SignatureRefused):
        services.sign_addendum(first, second_radiologist, "wrong")
    report.refresh_from_db()
    assert report.status == Report.Status.FINAL
    assert "sinus cyst" not in report.text  # unsigned addenda are not part of the report

    services.sign_addendum(first, second_radiologist, PASSWORD)
    second = services.add_addendum(report, personas.radiologist, "Compared with prior: stable.")
    services.sign_addendum(second, personas.radiologist, PASSWORD)
    report.refresh_from_db()
    assert report.status == Report.Status.AMENDED
    text = report.text
    assert text.startswith(report.final_text)
    assert text.index("Small sinus cyst.") < text.index("Compared with prior")
    assert "ADDENDUM (rad2," in text
    with pytest.raises(ValidationError, match="already signed"):
        services.sign_addendum(second, personas.radiologist, PASSWORD)


# ---------------------------------------------------------------- critical findings


def test_critical_flag_and_acknowledgement_are_audited(personas: Personas) -> None:
    report = _write(
        _claimed_report(personas.radiologist, referring_physician=personas.referring_physician),
        personas.radiologist,
    )
    services.flag_critical(report, personas.radiologist)
    services.sign_report(report, personas.radiologist, PASSWORD, final=True)
    with pytest.raises(PermissionDenied):
        services.acknowledge_critical(report, personas.other_physician)
    services.acknowledge_critical(report, personas.referring_physician)
    report.refresh_from_db()
    assert report.critical and report.critical_acknowledged_by == personas.referring_physician
    details = list(
        AuditEvent.objects.filter(object_type="reporting.report", detail__contains="critical")
        .order_by("id")
        .values_list("actor_name", "detail")
    )
    assert details == [
        ("rad", "critical finding flagged"),
        ("drref", "critical finding acknowledged"),
    ]


# ---------------------------------------------------------------- dictation


WEBM = b"\x1aE\xdf\xa3" + b"\x00" * 60  # the EBML magic of a WebM file, then padding


def test_dictation_transcription_round_trip(personas: Personas) -> None:
    report = _claimed_report(personas.radiologist)
    dictation = services.attach_dictation(
        report, personas.radiologist, WEBM, "audio/webm;codecs=opus", duration_seconds=3.5
    )
    assert (services.dictation_root() / dictation.file_path).read_bytes() == WEBM
    report.refresh_from_db()
    assert report.transcription == Report.Transcription.DICTATED
    with pytest.raises(PermissionDenied):
        services.submit_transcription(report, personas.radiologist, ReportText(findings="x"))

    services.submit_transcription(
        report,
        personas.transcriptionist,
        ReportText(findings="Typed findings.", impression="Typed impression."),
    )
    report.refresh_from_db()
    assert report.transcription == Report.Transcription.TRANSCRIBED
    assert report.transcribed_by == personas.transcriptionist
    with pytest.raises(ValidationError, match="not waiting"):
        services.submit_transcription(report, personas.transcriptionist, ReportText())

    services.sign_report(report, personas.radiologist, PASSWORD, final=True)
    report.refresh_from_db()
    assert report.transcription == Report.Transcription.VERIFIED
    assert "Typed findings." in report.final_text


def test_dictation_refuses_what_is_not_audio(personas: Personas) -> None:
    report = _claimed_report(personas.radiologist)
    with pytest.raises(ValidationError, match="not a supported audio type"):
        services.attach_dictation(report, personas.radiologist, b"MZ", "application/x-msdownload")
    with pytest.raises(ValidationError, match="empty"):
        services.attach_dictation(report, personas.radiologist, b"", "audio/ogg")
