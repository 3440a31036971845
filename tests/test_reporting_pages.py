"""Reporting pages: who may see each, claims from the worklist, the editor, signing, dictation,
transcription, critical findings, turnaround; query counts on the lists."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from core.models import AuditEvent
from reporting import services
from reporting.models import Report, ReportTemplate
from reporting.services import ReportText
from tests import factories
from tests.personas import PASSWORD, Personas, make_user

pytestmark = pytest.mark.django_db

WEBM = b"\x1aE\xdf\xa3" + b"\x00" * 60


def _study(**order_fields: Any) -> Any:
    return factories.received_study(factories.order(**order_fields))


def _signed_report(personas: Personas, *, final: bool = True, **order_fields: Any) -> Report:
    study = _study(**order_fields)
    services.claim_study(study, personas.radiologist)
    report = services.start_report(study, personas.radiologist)
    services.save_draft(
        report, personas.radiologist, ReportText(findings="Normal.", impression="Nothing acute.")
    )
    return services.sign_report(report, personas.radiologist, PASSWORD, final=final)


PAGES = [
    # url name, needs an argument, personas allowed (everyone else gets 403)
    ("reporting:worklist", {"radiologist", "transcriptionist", "admin"}),
    ("reporting:transcription-queue", {"transcriptionist"}),
    (
        "reporting:critical-list",
        {"radiologist", "transcriptionist", "admin", "referring_physician", "other_physician"},
    ),
    ("reporting:turnaround", {"admin"}),
]


@pytest.mark.parametrize(("url_name", "allowed"), PAGES)
def test_page_access_by_role(
    personas: Personas, client: Any, url_name: str, allowed: set[str]
) -> None:
    for name, user in personas.all().items():
        client.force_login(user)
        status = client.get(reverse(url_name)).status_code
        assert status == (200 if name in allowed else 403), f"{name} on {url_name}: {status}"


def test_worklist_query_count_does_not_grow_with_rows(personas: Personas, login: Any) -> None:
    client = login(personas.radiologist)
    patient = factories.patient()
    factories.received_study(factories.order(patient))
    client.get(reverse("reporting:worklist"))  # warm up sessions and content types
    with CaptureQueriesContext(connection) as one:
        assert client.get(reverse("reporting:worklist")).status_code == 200
    for _ in range(4):
        study = factories.received_study(factories.order(patient))
        services.claim_study(study, personas.radiologist)
        services.start_report(study, personas.radiologist)
    with CaptureQueriesContext(connection) as five:
        page = client.get(reverse("reporting:worklist"))
    assert page.content.decode().count('id="study-') == 5
    assert len(five) == len(one), [q["sql"] for q in five.captured_queries]
    assert len(five) <= 10  # session, user, permissions, nav roles, count, rows, audit
    assert "4 priors" in page.content.decode()


def test_worklist_stat_first_filters_and_priors_link(personas: Personas, login: Any) -> None:
    routine = _study()
    stat = _study(priority="stat")
    knee = factories.procedure("MRKNEE", "MR", body_part="KNEE")
    mr = _study(procedure_type=knee, referring_physician_name="Welby^Marcus")
    client = login(personas.radiologist)
    content = client.get(reverse("reporting:worklist")).content.decode()
    assert content.index(stat.accession_number) < content.index(routine.accession_number)
    only_mr = client.get(reverse("reporting:worklist"), {"modality": "mr"}).content.decode()
    assert mr.accession_number in only_mr and routine.accession_number not in only_mr
    by_part = client.get(reverse("reporting:worklist"), {"body_part": "knee"}).content.decode()
    assert mr.accession_number in by_part and stat.accession_number not in by_part
    by_doctor = client.get(reverse("reporting:worklist"), {"referring": "welby"}).content.decode()
    assert mr.accession_number in by_doctor and stat.accession_number not in by_doctor
    bad = client.get(
        reverse("reporting:worklist"), {"date_from": "2026-02-01", "date_to": "2026-01-01"}
    )
    assert bad.status_code == 400


def test_priors_page_lists_the_patients_other_studies(personas: Personas, login: Any) -> None:
    patient = factories.patient()
    old = factories.received_study(factories.order(patient))
    new = factories.received_study(factories.order(patient))
    content = (
        login(personas.radiologist).get(reverse("reporting:priors", args=[new.pk])).content.decode()
    )
    table = content.split('id="prior-studies"')[1]
    assert old.accession_number in table and new.accession_number not in table


def test_claim_from_the_worklist_and_a_second_radiologist_is_refused(
    personas: Personas, client: Any
) -> None:
    ReportTemplate.objects.create(
        name="CT head", modality="CT", body_part="HEAD", findings="Ventricles: normal size."
    )
    study = _study(reason="Headache for three weeks.")
    client.force_login(personas.radiologist)
    answer = client.post(reverse("reporting:claim", args=[study.pk]))
    report = Report.objects.get(study=study)
    assert answer["Location"] == reverse("reporting:report", args=[report.pk])
    editor = client.get(answer["Location"]).content.decode()
    assert "Ventricles: normal size." in editor
    assert "Headache for three weeks." in editor
    assert f"/viewer/{study.study_instance_uid}/" in editor
    assert 'id="report-editor"' in editor

    other = make_user("rad2", "radiologist")
    client.force_login(other)
    listed = client.get(reverse("reporting:worklist")).content.decode()
    assert "Read by rad" in listed
    refused = client.post(reverse("reporting:claim", args=[study.pk]), follow=True)
    assert "rad is reading this study" in refused.content.decode()
    read_only = client.get(reverse("reporting:report", args=[report.pk])).content.decode()
    assert 'id="report-editor"' not in read_only
    autosave = client.post(reverse("reporting:autosave", args=[report.pk]), {"findings": "Mine."})
    assert autosave.status_code == 409 and "rad is reading" in autosave.json()["error"]


def test_autosave_then_sign_with_password(personas: Personas, login: Any) -> None:
    study = _study()
    client = login(personas.radiologist)
    client.post(reverse("reporting:claim", args=[study.pk]))
    report = Report.objects.get(study=study)
    saved = client.post(
        reverse("reporting:autosave", args=[report.pk]),
        {"findings": "Small lacune.", "impression": ""},
    )
    assert saved.status_code == 200 and saved.json()["label"].startswith("Saved")
    report.refresh_from_db()
    assert report.findings == "Small lacune."

    wrong = client.post(
        reverse("reporting:sign", args=[report.pk]),
        {"password": "nope", "final": "on", "impression": "Old lacune."},
        follow=True,
    )
    assert "password is not correct" in wrong.content.decode()
    report.refresh_from_db()
    assert report.status == Report.Status.DRAFT

    signed = client.post(
        reverse("reporting:sign", args=[report.pk]),
        {"password": PASSWORD, "final": "on", "impression": "Old lacune."},
    )
    assert signed["Location"] == reverse("reporting:worklist")
    report.refresh_from_db()
    assert report.status == Report.Status.FINAL and "Old lacune." in report.final_text
    worklist = client.get(reverse("reporting:worklist")).content.decode()
    assert f'id="study-{study.pk}"' not in worklist  # read: off the list
    locked = client.post(reverse("reporting:autosave", args=[report.pk]), {"findings": "x"})
    assert locked.status_code == 409 and "locked" in locked.json()["error"]

    page = client.get(reverse("reporting:report", args=[report.pk])).content.decode()
    assert 'id="addendum-form"' in page
    client.post(
        reverse("reporting:addendum", args=[report.pk]),
        {"text": "Compared with prior: unchanged.", "password": PASSWORD},
    )
    report.refresh_from_db()
    assert report.status == Report.Status.AMENDED
    assert "Compared with prior: unchanged." in report.text


def test_addendum_with_a_wrong_password_waits_unsigned(personas: Personas, login: Any) -> None:
    report = _signed_report(personas)
    client = login(personas.radiologist)
    client.post(
        reverse("reporting:addendum", args=[report.pk]), {"text": "Later.", "password": "x"}
    )
    pending = report.addenda.get()
    assert pending.signed_at is None
    page = client.get(reverse("reporting:report", args=[report.pk])).content.decode()
    assert "Unsigned addendum" in page
    client.post(reverse("reporting:addendum-sign", args=[pending.pk]), {"password": PASSWORD})
    pending.refresh_from_db()
    assert pending.signed_at is not None


def test_dictation_upload_transcription_and_verification(personas: Personas, client: Any) -> None:
    study = _study()
    client.force_login(personas.radiologist)
    client.post(reverse("reporting:claim", args=[study.pk]))
    report = Report.objects.get(study=study)
    upload = client.post(
        reverse("reporting:dictation-upload", args=[report.pk]),
        {"audio": SimpleUploadedFile("d.webm", WEBM, content_type="audio/webm"), "duration": "4.2"},
        HTTP_ACCEPT="application/json",
    )
    assert upload.status_code == 200, upload.content
    audio_url = upload.json()["url"]

    client.force_login(personas.transcriptionist)
    queue = client.get(reverse("reporting:transcription-queue")).content.decode()
    assert report.order.accession_number in queue
    audio = client.get(audio_url)
    assert audio.status_code == 200 and b"".join(audio.streaming_content) == WEBM
    assert audio["Content-Type"] == "audio/webm"
    page = client.get(reverse("reporting:transcribe", args=[report.pk])).content.decode()
    assert audio_url in page
    sent = client.post(
        reverse("reporting:transcribe", args=[report.pk]),
        {"findings": "Typed from the dictation.", "impression": "Normal."},
    )
    assert sent["Location"] == reverse("reporting:transcription-queue")
    queue = client.get(reverse("reporting:transcription-queue")).content.decode()
    assert f'id="report-{report.pk}"' not in queue

    client.force_login(personas.radiologist)
    editor = client.get(reverse("reporting:report", args=[report.pk])).content.decode()
    assert "Transcribed, awaiting verification" in editor and "Typed from the dictation." in editor
    client.post(reverse("reporting:sign", args=[report.pk]), {"password": PASSWORD, "final": "on"})
    report.refresh_from_db()
    assert report.status == Report.Status.FINAL
    assert report.transcription == Report.Transcription.VERIFIED

    client.force_login(personas.referring_physician)
    assert client.get(audio_url).status_code == 403


def test_transcription_queue_query_count(personas: Personas, login: Any) -> None:
    def dictated() -> None:
        study = _study()
        services.claim_study(study, personas.radiologist)
        report = services.start_report(study, personas.radiologist)
        services.attach_dictation(report, personas.radiologist, WEBM, "audio/webm")

    dictated()
    client = login(personas.transcriptionist)
    client.get(reverse("reporting:transcription-queue"))
    with CaptureQueriesContext(connection) as one:
        client.get(reverse("reporting:transcription-queue"))
    for _ in range(3):
        dictated()
    with CaptureQueriesContext(connection) as four:
        page = client.get(reverse("reporting:transcription-queue"))
    assert page.content.decode().count('id="report-') == 4
    assert len(four) == len(one)


def test_referring_physician_reads_signed_reports_of_their_orders_only(
    personas: Personas, client: Any
) -> None:
    mine = _signed_report(personas, referring_physician=personas.referring_physician)
    draft_study = _study(referring_physician=personas.referring_physician)
    services.claim_study(draft_study, personas.radiologist)
    draft = services.start_report(draft_study, personas.radiologist)

    client.force_login(personas.referring_physician)
    page = client.get(reverse("reporting:report", args=[mine.pk]))
    assert page.status_code == 200
    content = page.content.decode()
    assert "Nothing acute." in content and 'id="report-editor"' not in content
    assert f"/viewer/{mine.study.study_instance_uid}/" in content  # type: ignore[union-attr]
    assert 'id="addendum-form"' not in content
    assert reverse("reporting:report-pdf", args=[mine.pk]) in content
    assert client.get(reverse("reporting:report", args=[draft.pk])).status_code == 404
    assert client.post(reverse("reporting:autosave", args=[mine.pk])).status_code == 403

    from ris.services import grant_patient_access

    grant_patient_access(mine.order.patient, personas.patient)
    client.force_login(personas.patient)
    assert client.get(reverse("reporting:report", args=[mine.pk])).status_code == 200
    for outsider in (
        personas.other_physician,
        personas.front_desk,
        personas.outsider,
    ):
        client.force_login(outsider)
        assert client.get(reverse("reporting:report", args=[mine.pk])).status_code == 404
    assert AuditEvent.objects.filter(
        action=AuditEvent.Action.DENIED, object_type="reporting.report", actor=personas.outsider
    ).exists()


def test_critical_finding_page_and_acknowledgement(personas: Personas, client: Any) -> None:
    study = _study(referring_physician=personas.referring_physician)
    services.claim_study(study, personas.radiologist)
    report = services.start_report(study, personas.radiologist)
    services.save_draft(report, personas.radiologist, ReportText(impression="Large bleed."))
    client.force_login(personas.radiologist)
    client.post(reverse("reporting:flag-critical", args=[report.pk]))
    services.sign_report(report, personas.radiologist, PASSWORD, final=False)

    client.force_login(personas.other_physician)
    assert (
        report.order.accession_number
        not in client.get(reverse("reporting:critical-list")).content.decode()
    )
    assert client.post(reverse("reporting:acknowledge", args=[report.pk])).status_code == 404

    client.force_login(personas.referring_physician)
    listed = client.get(reverse("reporting:critical-list")).content.decode()
    assert report.order.accession_number in listed and "Acknowledge" in listed
    client.post(reverse("reporting:acknowledge", args=[report.pk]))
    report.refresh_from_db()
    assert report.critical_acknowledged_by == personas.referring_physician
    listed = client.get(reverse("reporting:critical-list")).content.decode()
    assert f'id="critical-{report.pk}"' not in listed
    assert AuditEvent.objects.filter(
        actor=personas.referring_physician, detail="critical finding acknowledged"
    ).exists()


def test_admin_reassigns_from_the_worklist(personas: Personas, client: Any) -> None:
    study = _study()
    services.claim_study(study, personas.radiologist)
    other = make_user("rad2", "radiologist")
    client.force_login(personas.admin)
    page = client.get(reverse("reporting:worklist")).content.decode()
    assert "Reassign" in page
    client.post(reverse("reporting:reassign", args=[study.pk]), {"radiologist": other.pk})
    client.force_login(personas.radiologist)
    assert (
        client.post(
            reverse("reporting:reassign", args=[study.pk]), {"radiologist": personas.radiologist.pk}
        ).status_code
        == 403
    )
    listed = client.get(reverse("reporting:worklist")).content.decode()
    assert "Read by rad2" in listed


def test_turnaround_page_shows_tables_and_charts(personas: Personas, login: Any) -> None:
    _signed_report(personas, final=True)
    _signed_report(personas, final=False)
    page = login(personas.admin).get(reverse("reporting:turnaround"))
    content = page.content.decode()
    assert page.status_code == 200
    assert 'id="turnaround-modality"' in content and 'id="turnaround-radiologist"' in content
    assert '<svg class="chart" id="chart-workload"' in content
    assert "http" not in content.split('<svg class="chart" id="chart-workload"')[1].split("</svg>")[
        0
    ].replace("http://www.w3.org/2000/svg", "")


def test_turnaround_figures(personas: Personas) -> None:
    import datetime as dt

    from django.utils import timezone

    from reporting import selectors

    report = _signed_report(personas, final=True)
    since = timezone.now() - dt.timedelta(days=1)
    by_modality = selectors.turnaround(since, "modality")
    assert [(row.key, row.reports) for row in by_modality] == [("CT", 1)]
    assert by_modality[0].exam_to_final is not None and by_modality[
        0
    ].exam_to_final >= dt.timedelta(0)
    assert by_modality[0].exam_to_preliminary is None
    by_radiologist = selectors.turnaround(since, "radiologist")
    assert [row.key for row in by_radiologist] == ["rad"]
    workload = selectors.workload(since)
    assert [(row["radiologist"], row["reports"]) for row in workload] == [("rad", 1)]
    assert json.dumps(report.pk)


def test_report_list_shows_a_referrer_their_signed_reports_in_constant_queries(
    personas: Personas, client: Any
) -> None:
    def referred() -> Report:
        return _signed_report(personas, referring_physician=personas.referring_physician)

    first = referred()
    other = _signed_report(personas)
    client.force_login(personas.referring_physician)
    client.get(reverse("reporting:report-list"))
    with CaptureQueriesContext(connection) as one:
        page = client.get(reverse("reporting:report-list")).content.decode()
    assert f'id="report-{first.pk}"' in page and f'id="report-{other.pk}"' not in page
    for _ in range(3):
        referred()
    with CaptureQueriesContext(connection) as four:
        page = client.get(reverse("reporting:report-list")).content.decode()
    assert page.count('id="report-') == 4
    assert len(four) == len(one)
    for name in ("front_desk", "technologist", "outsider"):
        client.force_login(getattr(personas, name))
        assert client.get(reverse("reporting:report-list")).status_code == 403
    client.force_login(personas.other_physician)
    assert 'id="report-' not in client.get(reverse("reporting:report-list")).content.decode()


def test_report_fragments_of_the_patient_page_and_the_viewer(
    personas: Personas, client: Any
) -> None:
    mine = _signed_report(personas, referring_physician=personas.referring_physician)
    patient_url = reverse("reporting:patient-reports", args=[mine.order.patient_id])
    panel_url = reverse("reporting:viewer-report", args=[mine.study_id])
    for reader in (personas.radiologist, personas.referring_physician):
        client.force_login(reader)
        listing = client.get(patient_url).content.decode()
        assert mine.order.accession_number in listing
        assert reverse("reporting:report-pdf", args=[mine.pk]) in listing
        panel = client.get(panel_url).content.decode()
        assert "Nothing acute." in panel and "Final" in panel
    assert AuditEvent.objects.filter(
        actor=personas.referring_physician, object_id=str(mine.pk), detail="beside the images"
    ).exists()
    for other in (personas.other_physician, personas.front_desk, personas.outsider):
        client.force_login(other)
        assert mine.order.accession_number not in client.get(patient_url).content.decode()
        assert "No report yet." in client.get(panel_url).content.decode()
    # The pages that host them load them by their URL names.
    client.force_login(personas.radiologist)
    viewer = client.get(reverse("viewer", args=[mine.study.study_instance_uid]))  # type: ignore[union-attr]
    assert panel_url in viewer.content.decode()
