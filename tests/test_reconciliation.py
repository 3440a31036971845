"""Reconciliation end to end: book an order, C-STORE its images, match or queue, fix, C-FIND."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest

from pacs import header_rewrite, reconciliation, tasks
from pacs.models import HeaderRewrite, Instance, ReconciliationItem, Study
from pacs.storage import default_storage
from ris import services as ris_services
from ris.models import Patient, RequestedProcedure
from tests import dicom_factory, factories
from tests.archive import find, query, running_archive, store
from tests.personas import Personas

pytestmark = [
    pytest.mark.django_db(transaction=True),
    # The header rewrite is a Celery task; in CI a broker is configured but no worker runs.
    pytest.mark.usefixtures("eager"),
]


@pytest.fixture
def archive(settings: Any) -> Iterator[int]:
    settings.RECONCILIATION_REWRITE_DELAY = 0
    with running_archive() as port:
        yield port


def _patient(family: str = "Testperson", given: str = "Alex", mrn: str = "MRN4242") -> Patient:
    return factories.patient(
        family,
        given,
        birth_date=dt.date(1970, 1, 1),
        sex="F",
        identifiers=[ris_services.IdentifierInput(mrn, "DEMO")],
    )


def _instances(requested: RequestedProcedure, count: int = 2, **fields: Any) -> list[Any]:
    defaults: dict[str, Any] = {
        "study_uid": requested.study_instance_uid,
        "accession": requested.order.accession_number,
        "patient_name": "Testperson^Alex",
        "patient_id": "MRN4242",
        "issuer": "DEMO",
    }
    return dicom_factory.series(count, **{**defaults, **fields})


def _stored_headers(study: Study) -> list[pydicom.Dataset]:
    storage = default_storage()
    return [
        pydicom.dcmread(storage.path(path))
        for path in Instance.objects.filter(series__study=study).values_list("file_path", flat=True)
    ]


def test_matching_study_is_linked_and_marks_images_received(archive: int) -> None:
    order = factories.order(_patient())
    requested = order.requested_procedures.get()

    statuses = store(archive, _instances(requested))

    assert all(status.Status == 0x0000 for status in statuses)
    study = Study.objects.get(study_instance_uid=requested.study_instance_uid)
    assert study.requested_procedure == requested
    assert study.patient == order.patient
    requested.refresh_from_db()
    assert requested.status == RequestedProcedure.Status.IMAGES_RECEIVED
    assert not ReconciliationItem.objects.exists()
    assert not HeaderRewrite.objects.exists()  # nothing to coerce
    assert all("OriginalAttributesSequence" not in ds for ds in _stored_headers(study))


def test_match_by_accession_coerces_the_name_form_and_keeps_the_original(archive: int) -> None:
    order = factories.order(_patient())
    requested = order.requested_procedures.get()
    # Another Study Instance UID (the modality made its own), the order's accession, the
    # name in another case and spacing: a match, coerced to the RIS form.
    datasets = _instances(requested, study_uid=dicom_factory.uid(), patient_name="TESTPERSON ^alex")

    store(archive, datasets)
    study = Study.objects.get(study_instance_uid=datasets[0].StudyInstanceUID)
    assert study.requested_procedure == requested
    assert study.patient_name == "Testperson^Alex"
    assert not ReconciliationItem.objects.exists()
    # Queued with the delay for instances still arriving (0 here), for the beat sweep.
    assert HeaderRewrite.objects.filter(study=study, reason="COERCE").exists()
    assert tasks.sweep_header_rewrites() == [study.pk]

    headers = _stored_headers(study)
    assert len(headers) == 2
    for ds in headers:
        assert ds.PatientName == "Testperson^Alex"
        (original,) = ds.OriginalAttributesSequence
        assert original.ReasonForTheAttributeModification == "COERCE"
        assert original.ModifiedAttributesSequence[0].PatientName == "TESTPERSON ^alex"
    requested.refresh_from_db()
    assert requested.study_instance_uid == study.study_instance_uid
    assert requested.status == RequestedProcedure.Status.IMAGES_RECEIVED
    study.refresh_from_db()
    sizes = Instance.objects.filter(series__study=study).values_list("file_path", "file_size")
    assert all(default_storage().path(path).stat().st_size == size for path, size in sizes)
    assert study.size_bytes == sum(size for _, size in sizes)


def test_wrong_patient_id_is_queued_and_linking_rewrites_files_and_cfind(archive: int) -> None:
    patient = _patient()
    order = factories.order(patient)
    requested = order.requested_procedures.get()
    store(archive, _instances(requested, patient_id="WRONG99", patient_name="Other^Person"))

    study = Study.objects.get(study_instance_uid=requested.study_instance_uid)
    item = ReconciliationItem.objects.get(study=study)
    assert item.status == ReconciliationItem.Status.OPEN
    assert item.reason == ReconciliationItem.Reason.PATIENT_MISMATCH
    assert item.requested_procedure == requested
    assert item.received["PatientID"] == "WRONG99"
    assert item.expected["PatientID"] == "MRN4242"
    assert study.requested_procedure is None
    requested.refresh_from_db()
    assert requested.status == RequestedProcedure.Status.SCHEDULED

    clerk = factories_user()
    reconciliation.link_to_order(item, requested, actor=clerk)

    item.refresh_from_db()
    assert item.status == ReconciliationItem.Status.RESOLVED
    assert item.resolution == ReconciliationItem.Resolution.LINKED
    for ds in _stored_headers(study):
        assert ds.PatientID == "MRN4242"
        assert ds.PatientName == "Testperson^Alex"
        (original,) = ds.OriginalAttributesSequence
        assert original.ReasonForTheAttributeModification == "CORRECT"
        assert original.ModifyingSystem == header_rewrite.MODIFYING_SYSTEM
        modified = original.ModifiedAttributesSequence[0]
        assert modified.PatientID == "WRONG99"
        assert modified.PatientName == "Other^Person"
    assert not HeaderRewrite.objects.exists()
    matches, final = find(
        archive,
        query("STUDY", StudyInstanceUID=study.study_instance_uid, PatientID="", PatientName=""),
    )
    assert final.Status == 0x0000
    (match,) = matches
    assert match.PatientID == "MRN4242"
    assert match.PatientName == "Testperson^Alex"
    requested.refresh_from_db()
    assert requested.status == RequestedProcedure.Status.IMAGES_RECEIVED


def test_study_without_order_is_queued_and_marked_unscheduled(archive: int) -> None:
    patient = _patient()
    datasets = dicom_factory.series(1, patient_id="MRN4242", issuer="DEMO", accession="")
    store(archive, datasets)
    study = Study.objects.get(study_instance_uid=datasets[0].StudyInstanceUID)
    item = ReconciliationItem.objects.get(study=study)
    assert item.reason == ReconciliationItem.Reason.NO_ORDER

    order = reconciliation.mark_unscheduled(
        item, factories.procedure(), patient=patient, actor=factories_user()
    )

    study.refresh_from_db()
    assert study.requested_procedure is not None
    assert study.requested_procedure.order == order
    assert study.accession_number == order.accession_number
    (ds,) = _stored_headers(study)
    assert ds.AccessionNumber == order.accession_number
    item.refresh_from_db()
    assert item.resolution == ReconciliationItem.Resolution.UNSCHEDULED
    requested = study.requested_procedure
    assert requested.status == RequestedProcedure.Status.IMAGES_RECEIVED
    assert not requested.steps.filter(status="scheduled").exists()  # not on the worklist


def test_images_for_a_cancelled_order_are_queued(archive: int) -> None:
    order = factories.order(_patient())
    ris_services.cancel_order(order, "booked in error")
    requested = order.requested_procedures.get()
    store(archive, _instances(requested, count=1))
    item = ReconciliationItem.objects.get()
    assert item.reason == ReconciliationItem.Reason.ORDER_CANCELLED
    assert item.study.requested_procedure is None


def test_the_hook_runs_once_per_new_study_and_series(
    archive: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bool] = []
    original = reconciliation.after_index

    def counting(study_id: int, header: Any, *, new_study: bool) -> None:
        calls.append(new_study)
        original(study_id, header, new_study=new_study)

    monkeypatch.setattr(reconciliation, "after_index", counting)
    order = factories.order(_patient())
    requested = order.requested_procedures.get()
    store(archive, _instances(requested, count=5))
    store(archive, _instances(requested, count=3))  # a second series of the same study
    assert calls == [True, False]


def test_new_series_with_another_patient_is_queued(archive: int) -> None:
    order = factories.order(_patient())
    requested = order.requested_procedures.get()
    store(archive, _instances(requested, count=1))
    assert not ReconciliationItem.objects.exists()

    store(archive, _instances(requested, count=1, patient_id="SOMEONE", patient_name="Else^X"))

    item = ReconciliationItem.objects.get()
    assert item.reason == ReconciliationItem.Reason.SERIES_MISMATCH


def test_merge_updates_the_index_at_once_and_rewrites_the_files(archive: int) -> None:
    survivor = _patient("Survivor", "Sam", "MRN1")
    merged = _patient("Merged", "Max", "MRN2")
    datasets = dicom_factory.series(2, patient_id="MRN2", issuer="DEMO", patient_name="Merged^Max")
    store(archive, datasets)
    study = Study.objects.get(study_instance_uid=datasets[0].StudyInstanceUID)
    assert study.patient == merged

    ris_services.merge_patients(survivor, merged)

    study.refresh_from_db()
    assert study.patient == survivor
    assert study.dicom_patient_id == "MRN1"
    assert study.patient_name == "Survivor^Sam"
    matches, _ = find(archive, query("STUDY", PatientID="MRN1", StudyInstanceUID=""))
    assert [m.StudyInstanceUID for m in matches] == [study.study_instance_uid]
    for ds in _stored_headers(study):
        assert ds.PatientID == "MRN1"
        assert ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].PatientID == "MRN2"


def factories_user() -> Any:
    from django.contrib.auth.models import User

    return User.objects.create_user("reconciler")


def test_reject_leaves_the_study_as_received(archive: int, personas: Personas) -> None:
    datasets = dicom_factory.series(1, accession="")
    store(archive, datasets)
    item = ReconciliationItem.objects.get()
    reconciliation.reject(item, "test image", actor=personas.front_desk)
    item.refresh_from_db()
    assert item.status == ReconciliationItem.Status.REJECTED
    (ds,) = _stored_headers(item.study)
    assert "OriginalAttributesSequence" not in ds
