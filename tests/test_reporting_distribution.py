"""Distribution of signed reports: ORU^R01 to the EMR, the PDF, the PDF stored in the study."""

from __future__ import annotations

import datetime as dt
import io
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from django.contrib.auth.models import User
from django.db import transaction
from django.test import Client
from django.utils import timezone
from pypdf import PdfReader

from core.models import AuditEvent
from pacs.models import Instance, Series, Study
from pacs.services import ingest_instance
from pacs.storage import default_storage
from reporting import distribution, encapsulated, services, tasks
from reporting.models import Addendum, Report
from reporting.pdf import ReportContent, render_report_pdf
from ris import services as ris_services
from ris.hl7 import er7
from ris.hl7.models import Destination, OutboundMessage
from ris.models import Order
from tests import dcmtk, dicom_factory, factories
from tests.archive import ARCHIVE_AE, find, query, running_archive
from tests.hl7util import MLLPReceiver
from tests.netutil import wait_until
from tests.personas import PASSWORD, Personas

SIGNED_AT = dt.datetime(2026, 3, 2, 9, 30, tzinfo=dt.UTC)
FINDINGS = "No intracranial haemorrhage.\nVentricles normal in size."
IMPRESSION = "No acute intracranial finding."


def pdf_text(pdf: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)


# ---------------------------------------------------------------- no database


def content(**fields: Any) -> ReportContent:
    values: dict[str, Any] = {
        "institution_name": "Demo Imaging Centre",
        "institution_address": "1 Main Street\nSpringfield",
        "patient_name": "Łukasz Müller",
        "patient_id": "MRN000001 (DEMO)",
        "birth_date": dt.date(1970, 1, 2),
        "sex": "Male",
        "procedure": "CT head (CTHEAD)",
        "accession_number": "A260302001",
        "study_date": dt.date(2026, 3, 2),
        "referring_physician": "Rita Referrer",
        "text": f"FINDINGS:\n{FINDINGS}\n\nIMPRESSION:\n{IMPRESSION}",
        "status": "final",
        "status_label": "Final",
        "signed_by": "Ray Radiologist",
        "signed_at": SIGNED_AT,
    }
    values.update(fields)
    return ReportContent(**values)


def test_the_pdf_carries_header_patient_exam_text_and_signature() -> None:
    pdf = render_report_pdf(content())
    assert pdf.startswith(b"%PDF-")
    text = pdf_text(pdf)
    for expected in (
        "Demo Imaging Centre",
        "Springfield",
        "Łukasz Müller",
        "MRN000001 (DEMO)",
        "1970-01-02",
        "CT head (CTHEAD)",
        "A260302001",
        "2026-03-02",
        "Rita Referrer",
        "Ventricles normal in size.",
        IMPRESSION,
        "Final",
        "Signed (final) by Ray Radiologist, 2026-03-02 09:30",
    ):
        assert expected in text, expected
    assert "PRELIMINARY REPORT" not in text
    assert render_report_pdf(content()) == pdf  # the same version renders the same bytes


def test_a_preliminary_pdf_says_so() -> None:
    text = pdf_text(render_report_pdf(content(status="preliminary", status_label="Preliminary")))
    assert "PRELIMINARY REPORT" in text


def encapsulated_report(**fields: Any) -> encapsulated.EncapsulatedReport:
    values: dict[str, Any] = {
        "report_id": 7,
        "version": "final-20260302093000000000",
        "pdf": render_report_pdf(content()),
        "verified": True,
        "content_at": SIGNED_AT,
        "study_instance_uid": "1.2.826.0.1.3680043.8.498.1",
        "patient_name": "Testperson^Alex",
        "patient_id": "MRN000001",
        "issuer_of_patient_id": "DEMO",
        "patient_birth_date": dt.date(1970, 1, 2),
        "patient_sex": "F",
        "accession_number": "A260302001",
    }
    values.update(fields)
    return encapsulated.EncapsulatedReport(**values)


def test_the_encapsulated_pdf_reads_back_with_its_document() -> None:
    report = encapsulated_report()
    raw = encapsulated.encode(encapsulated.build_dataset(report))
    ds = pydicom.dcmread(io.BytesIO(raw), force=True)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = encapsulated.TRANSFER_SYNTAX
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1"
    assert ds.Modality == "DOC"
    assert ds.SeriesDescription == "Report"
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert ds.VerificationFlag == "VERIFIED"
    code = ds.ConceptNameCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
        "18748-4",
        "LN",
        "Diagnostic imaging study",
    )
    assert (ds.ContentDate, ds.ContentTime) == ("20260302", "093000")
    assert "SpecificCharacterSet" not in ds  # all ASCII: the default repertoire
    document = ds.EncapsulatedDocument[: ds.EncapsulatedDocumentLength]
    assert document == report.pdf
    assert len(ds.EncapsulatedDocument) % 2 == 0


def test_non_ascii_names_are_utf8_and_uids_follow_the_version() -> None:
    ds = encapsulated.build_dataset(encapsulated_report(patient_name="Müller^Łukasz"))
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    back = pydicom.dcmread(io.BytesIO(encapsulated.encode(ds)), force=True)
    assert str(back.PatientName) == "Müller^Łukasz"
    first = encapsulated.instance_uid(7, "final-1")
    assert first == encapsulated.instance_uid(7, "final-1")  # a retry: the same instance
    assert first != encapsulated.instance_uid(7, "amended-2")
    assert first != encapsulated.instance_uid(8, "final-1")
    assert first.startswith("2.25.") and len(first) <= 64
    unverified = encapsulated.build_dataset(encapsulated_report(verified=False))
    assert unverified.VerificationFlag == "UNVERIFIED"


# ---------------------------------------------------------------- with the database


def booked(referrer: User | None = None, *, placer: str = "PLC-77", **patient_fields: Any) -> Order:
    patient = factories.patient(
        "Testperson",
        "Alex",
        birth_date=dt.date(1970, 1, 1),  # as the images say (tests.dicom_factory)
        sex="F",
        identifiers=[ris_services.IdentifierInput(f"MRN{next(_numbers):05d}", "DEMO")],
        **patient_fields,
    )
    return factories.order(
        patient,
        referring_physician=referrer,
        referring_physician_name="Referrer^Rita^^Dr",
        placer_order_number=placer,
    )


_numbers = iter(range(1, 100_000))


def images(order: Order) -> Study:
    """Store one CT image of ORDER's study the way STOW and C-STORE do; return the study."""
    requested = order.requested_procedures.get()
    identifier = order.patient.identifiers.get()
    ds = dicom_factory.ct_instance(
        study_uid=requested.study_instance_uid,
        accession=order.accession_number,
        patient_name="Testperson^Alex",
        patient_id=identifier.value,
        issuer="DEMO",
    )
    ingest_instance(dicom_factory.encoded(ds), transfer_syntax=ds.file_meta.TransferSyntaxUID)
    return Study.objects.get(study_instance_uid=requested.study_instance_uid)


def signed(
    order: Order,
    study: Study | None,
    radiologist: User,
    status: str = Report.Status.FINAL,
    at: dt.datetime = SIGNED_AT,
) -> Report:
    return Report.objects.create(
        order=order,
        study=study,
        status=status,
        findings=FINDINGS,
        impression=IMPRESSION,
        signed_by=radiologist,
        signed_at=at,
    )


def distribute(report: Report) -> None:
    """Call the entry point inside a transaction, as signing does, and let it commit."""
    with transaction.atomic():
        distribution.report_signed(report)


def report_instances(report: Report) -> list[Instance]:
    return list(
        Instance.objects.filter(
            series__series_instance_uid=encapsulated.series_uid(report.pk)
        ).order_by("instance_number")
    )


def stored_dataset(instance: Instance) -> pydicom.Dataset:
    return pydicom.dcmread(default_storage().path(instance.file_path))


def stored_pdf(instance: Instance) -> bytes:
    ds = stored_dataset(instance)
    return bytes(ds.EncapsulatedDocument[: ds.EncapsulatedDocumentLength])


@pytest.fixture
def receiver() -> Iterator[MLLPReceiver]:
    his = MLLPReceiver()
    his.up()
    yield his
    his.close()


@pytest.mark.django_db(transaction=True)
def test_signing_final_sends_oru_and_stores_the_pdf_in_the_study(
    personas: Personas, eager: None, receiver: MLLPReceiver, settings: Any
) -> None:
    settings.INSTITUTION_NAME = "Springfield Radiology"
    Destination.objects.create(
        name="emr", host="127.0.0.1", port=receiver.port, message_types="ORU"
    )
    order = booked(personas.referring_physician)
    study = images(order)
    radiologist = personas.radiologist
    radiologist.first_name, radiologist.last_name = "Ray", "Radiologist"
    radiologist.save()

    report = signed(order, study, radiologist, at=timezone.now())
    distribute(report)

    # ORU^R01 at the EMR's MLLP receiver: F, accession and procedure, the text line by line.
    [received] = wait_until(lambda: receiver.received or None, what="the ORU^R01")
    assert received.message_type == "ORU^R01"
    message = er7.parse(received.text)
    obr = message.first("OBR")
    assert obr is not None
    assert (obr.value(2), obr.value(3), obr.value(4), obr.value(25)) == (
        "PLC-77",
        order.accession_number,
        "CTHEAD",
        "F",
    )
    assert obr.value(32, 1, 1) == radiologist.username
    lines = [obx.value(5) for obx in message.all("OBX")]
    assert "No intracranial haemorrhage." in lines and IMPRESSION in lines
    assert {obx.value(11) for obx in message.all("OBX")} == {"F"}
    assert OutboundMessage.objects.get().status == OutboundMessage.Status.DELIVERED

    # The PDF, kept on disk under STORAGE_DIR/reports/<accession>/.
    version = distribution.report_version(report)
    path = Path(settings.STORAGE_DIR) / "reports" / order.accession_number
    assert path / f"{report.pk}-{version}.pdf" == distribution.pdf_path(report, version)
    on_disk = distribution.pdf_path(report, version).read_bytes()
    assert on_disk.startswith(b"%PDF-")
    assert "Springfield Radiology" in pdf_text(on_disk)

    # ... and in the study: C-FIND at SERIES and IMAGE level finds the Encapsulated PDF.
    [instance] = report_instances(report)
    with running_archive() as port:
        series, status = find(
            port,
            query(
                "SERIES",
                StudyInstanceUID=study.study_instance_uid,
                SeriesInstanceUID="",
                Modality="DOC",
                SeriesDescription="",
            ),
        )
        assert status.Status == 0x0000
        [doc_series] = series
        assert doc_series.SeriesDescription == "Report"
        matches, status = find(
            port,
            query(
                "IMAGE",
                StudyInstanceUID=study.study_instance_uid,
                SeriesInstanceUID=doc_series.SeriesInstanceUID,
                SOPInstanceUID="",
                SOPClassUID="",
            ),
        )
    assert status.Status == 0x0000
    [match] = matches
    assert match.SOPClassUID == encapsulated.ENCAPSULATED_PDF_STORAGE
    assert match.SOPInstanceUID == instance.sop_instance_uid
    assert match.SOPInstanceUID == encapsulated.instance_uid(report.pk, version)

    ds = stored_dataset(instance)
    assert (ds.StudyInstanceUID, ds.PatientID, ds.IssuerOfPatientID) == (
        study.study_instance_uid,
        study.dicom_patient_id,
        "DEMO",
    )
    assert (str(ds.PatientName), ds.PatientBirthDate, ds.PatientSex) == (
        "Testperson^Alex",
        "19700101",
        "F",
    )
    assert ds.AccessionNumber == order.accession_number
    assert ds.VerificationFlag == "VERIFIED"
    assert ds.DocumentTitle == "Radiology report"
    document = stored_pdf(instance)
    assert document == on_disk
    assert IMPRESSION in pdf_text(document)
    study.refresh_from_db()
    assert "DOC" in study.modalities_in_study

    # A retried task stores nothing twice.
    assert tasks.archive_report.delay(report.pk, report.status, version).get() == (
        distribution.ALREADY_STORED
    )
    assert len(report_instances(report)) == 1
    assert AuditEvent.objects.filter(
        object_type="reporting.report",
        object_id=str(report.pk),
        detail__contains="Encapsulated PDF",
    ).exists()


@pytest.mark.django_db(transaction=True)
def test_signing_in_the_reading_room_distributes(personas: Personas, eager: None) -> None:
    Destination.objects.create(name="emr", host="127.0.0.1", port=9, message_types="ORU")
    order = booked(personas.referring_physician)
    study = images(order)
    radiologist = personas.radiologist
    # The way the reading room does it: claim, write, sign final with the password.
    services.claim_study(study, radiologist)
    report = services.start_report(study, radiologist)
    services.save_draft(
        report, radiologist, services.ReportText(findings=FINDINGS, impression=IMPRESSION)
    )
    report = services.sign_report(report, radiologist, PASSWORD, final=True)

    [message] = OutboundMessage.objects.all()
    obr = er7.parse(message.raw).first("OBR")
    assert obr is not None and (obr.value(3), obr.value(25)) == (order.accession_number, "F")
    [instance] = report_instances(report)
    assert instance.series.study == study
    assert IMPRESSION in pdf_text(stored_pdf(instance))


@pytest.mark.django_db
def test_each_signature_is_a_version_with_its_result_status(
    personas: Personas, eager: None, django_capture_on_commit_callbacks: Any
) -> None:
    Destination.objects.create(name="emr", host="127.0.0.1", port=9, message_types="ORU")
    order = booked(personas.referring_physician)
    study = images(order)
    report = signed(order, study, personas.radiologist, Report.Status.PRELIMINARY)
    with django_capture_on_commit_callbacks(execute=True):
        distribution.report_signed(report)

    report.status = Report.Status.FINAL
    report.signed_at = SIGNED_AT + dt.timedelta(hours=1)
    report.save()
    with django_capture_on_commit_callbacks(execute=True):
        distribution.report_signed(report)

    Addendum.objects.create(
        report=report,
        text="Small old lacunar infarct, left thalamus.",
        author=personas.radiologist,
        signed_by=personas.radiologist,
        signed_at=SIGNED_AT + dt.timedelta(days=1),
    )
    report.status = Report.Status.AMENDED
    report.save()
    with django_capture_on_commit_callbacks(execute=True):
        distribution.report_signed(report)

    statuses = [
        er7.parse(raw).first("OBR").value(25)  # type: ignore[union-attr]
        for raw in OutboundMessage.objects.order_by("id").values_list("raw", flat=True)
    ]
    assert statuses == ["P", "F", "C"]
    amended_oru = er7.parse(OutboundMessage.objects.order_by("id").last().raw)  # type: ignore[union-attr]
    assert "Small old lacunar infarct, left thalamus." in [
        obx.value(5) for obx in amended_oru.all("OBX")
    ]

    instances = report_instances(report)
    assert [i.instance_number for i in instances] == [1, 2, 3]
    assert len({i.sop_instance_uid for i in instances}) == 3
    flags = [stored_dataset(i).VerificationFlag for i in instances]
    assert flags == ["UNVERIFIED", "VERIFIED", "VERIFIED"]
    assert "lacunar infarct" in pdf_text(stored_pdf(instances[-1]))
    assert "lacunar infarct" not in pdf_text(stored_pdf(instances[1]))
    assert Series.objects.filter(study=study, modality="DOC").count() == 1  # one report series
    folder = Path(distribution.pdf_path(report, "x")).parent
    assert len(list(folder.glob(f"{report.pk}-*.pdf"))) == 3


@pytest.mark.django_db
def test_a_superseded_version_is_not_stored(personas: Personas) -> None:
    order = booked()
    study = images(order)
    report = signed(order, study, personas.radiologist, Report.Status.PRELIMINARY)
    old = distribution.report_version(report)
    report.status, report.signed_at = Report.Status.FINAL, SIGNED_AT + dt.timedelta(minutes=5)
    report.save()

    assert distribution.archive_report(report.pk, "preliminary", old).outcome == "superseded"
    assert distribution.archive_report(report.pk, "final", old).outcome == "superseded"
    assert report_instances(report) == []
    stored = distribution.archive_report(report.pk, "final", distribution.report_version(report))
    assert stored.outcome == distribution.STORED
    assert len(report_instances(report)) == 1


@pytest.mark.django_db
def test_a_report_without_images_keeps_its_pdf_on_disk(personas: Personas) -> None:
    order = booked()
    report = signed(order, None, personas.radiologist)
    archived = distribution.archive_report(
        report.pk, report.status, distribution.report_version(report)
    )
    assert archived.outcome == distribution.NO_STUDY
    assert archived.pdf_path is not None and archived.pdf_path.read_bytes().startswith(b"%PDF-")
    assert not Instance.objects.exists()

    # The images arrive later: the next run stores the very PDF kept on disk, in their study.
    study = images(order)
    again = distribution.archive_report(
        report.pk, report.status, distribution.report_version(report)
    )
    assert again.outcome == distribution.STORED
    [instance] = report_instances(report)
    assert instance.series.study == study
    assert stored_pdf(instance) == archived.pdf_path.read_bytes()


@pytest.mark.django_db
def test_no_oru_without_a_destination_and_a_failed_render_does_not_undo_the_signature(
    personas: Personas, eager: None, django_capture_on_commit_callbacks: Any, monkeypatch: Any
) -> None:
    order = booked()
    report = signed(order, images(order), personas.radiologist, at=timezone.now())

    def broken(_content: ReportContent) -> bytes:
        raise OSError("disk full")

    monkeypatch.setattr(distribution, "render_report_pdf", broken)
    with django_capture_on_commit_callbacks(execute=True):
        distribution.report_signed(report)  # the task fails after the commit, logged
    assert not OutboundMessage.objects.exists()
    assert report_instances(report) == []

    # Beat's sweep finds the version missing once the task has had its time, and stores it.
    monkeypatch.undo()
    assert distribution.unarchived_versions() == []  # signed just now: the task may be running
    later = timezone.now() + distribution.SWEEP_GRACE + dt.timedelta(seconds=1)
    version = distribution.report_version(report)
    assert distribution.unarchived_versions(later) == [(report.pk, "final", version)]
    monkeypatch.setattr(distribution.timezone, "now", lambda: later)
    assert tasks.sweep_unarchived_reports.delay().get() == 1
    assert len(report_instances(report)) == 1
    assert distribution.unarchived_versions(later) == []


# ---------------------------------------------------------------- the PDF page, per persona


def pdf_url(report: Report) -> str:
    return f"/reporting/reports/{report.pk}/pdf/"


@pytest.fixture
def reports(personas: Personas) -> dict[str, Report]:
    mine = booked(personas.referring_physician)
    theirs = booked(personas.other_physician, placer="PLC-78")
    ris_services.grant_patient_access(mine.patient, personas.patient)
    draft = Report.objects.create(order=mine, findings="Draft words.", author=personas.radiologist)
    return {
        "mine": signed(mine, None, personas.radiologist),
        "theirs": signed(theirs, None, personas.radiologist),
        "draft": draft,
    }


# Who gets what: 200 the PDF, 404 not theirs (or not signed), 403 no reading role at all.
EXPECTED = {
    "radiologist": {"mine": 200, "theirs": 200, "draft": 200},
    "transcriptionist": {"mine": 200, "theirs": 200, "draft": 200},
    "admin": {"mine": 200, "theirs": 200, "draft": 200},
    "referring_physician": {"mine": 200, "theirs": 404, "draft": 404},
    "other_physician": {"mine": 404, "theirs": 200, "draft": 404},
    "patient": {"mine": 200, "theirs": 404, "draft": 404},
    "front_desk": {"mine": 403, "theirs": 403, "draft": 403},
    "technologist": {"mine": 403, "theirs": 403, "draft": 403},
    "outsider": {"mine": 403, "theirs": 403, "draft": 403},
}


@pytest.mark.django_db
@pytest.mark.parametrize("persona", sorted(EXPECTED))
def test_who_may_open_the_report_pdf(
    persona: str, personas: Personas, reports: dict[str, Report], login: Any
) -> None:
    client: Client = login(getattr(personas, persona))
    for name, report in reports.items():
        response = client.get(pdf_url(report))
        assert response.status_code == EXPECTED[persona][name], (persona, name)
        events = AuditEvent.objects.filter(actor=getattr(personas, persona)).order_by("-id")
        if response.status_code == 200:
            assert response["Content-Type"] == "application/pdf"
            assert response.content.startswith(b"%PDF-")
            assert events.filter(action="view", object_id=str(report.pk)).exists()
        else:
            assert events.filter(action="denied", object_id=str(report.pk)).exists()


@pytest.mark.django_db
def test_the_pdf_page_shows_the_report_as_it_stands(
    personas: Personas, reports: dict[str, Report], login: Any
) -> None:
    report = reports["mine"]
    Addendum.objects.create(
        report=report,
        text="Compared with the prior: unchanged.",
        author=personas.radiologist,
        signed_by=personas.radiologist,
        signed_at=timezone.now(),
    )
    Report.objects.filter(pk=report.pk).update(status=Report.Status.AMENDED)
    response = login(personas.referring_physician).get(pdf_url(report))
    text = pdf_text(response.content)
    assert IMPRESSION in text and "Compared with the prior: unchanged." in text
    assert "Amended" in text
    assert 'filename="report-' in response["Content-Disposition"]


@pytest.mark.django_db
def test_an_unknown_report_is_404_and_anonymous_goes_to_log_in(
    personas: Personas, client: Client, login: Any
) -> None:
    assert client.get("/reporting/reports/999999/pdf/").status_code in (302, 403)
    assert login(personas.radiologist).get("/reporting/reports/999999/pdf/").status_code == 404


# ---------------------------------------------------------------- DCMTK as the independent peer


def dcmtk_run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [dcmtk.tool(tool), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, f"{tool} failed: {result.stdout}\n{result.stderr}"
    return result


@pytest.mark.dcmtk
@pytest.mark.django_db(transaction=True)
def test_dcmtk_finds_the_report_instance_and_reads_its_pdf(
    personas: Personas, tmp_path: Path
) -> None:
    order = booked(personas.referring_physician)
    study = images(order)
    report = signed(order, study, personas.radiologist)
    distribution.archive_report(report.pk, report.status, distribution.report_version(report))
    [instance] = report_instances(report)

    with running_archive() as port:
        dcmtk_run(
            "findscu",
            "-S",
            "-aet",
            "WORKSTN",
            "-aec",
            ARCHIVE_AE,
            "-X",
            "-od",
            str(tmp_path),
            "-k",
            "QueryRetrieveLevel=IMAGE",
            "-k",
            f"StudyInstanceUID={study.study_instance_uid}",
            "-k",
            f"SeriesInstanceUID={instance.series.series_instance_uid}",
            "-k",
            "SOPInstanceUID",
            "-k",
            "SOPClassUID",
            "127.0.0.1",
            str(port),
        )
    [response] = [pydicom.dcmread(path) for path in sorted(tmp_path.glob("rsp*.dcm"))]
    assert response.SOPInstanceUID == instance.sop_instance_uid
    assert response.SOPClassUID == encapsulated.ENCAPSULATED_PDF_STORAGE

    # DCMTK's own reader of Encapsulated PDF gets the document back byte for byte.
    extracted = tmp_path / "report.pdf"
    dcmtk_run("dcm2pdf", default_storage().path(instance.file_path), str(extracted))
    assert extracted.read_bytes().rstrip(b"\x00") == stored_pdf(instance)
    assert IMPRESSION in pdf_text(extracted.read_bytes())
