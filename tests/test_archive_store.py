"""C-STORE into the archive: durable, indexed once, bad input refused with a reason."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from django.conf import settings
from pydicom import dcmread
from pydicom.uid import ImplicitVRLittleEndian, MRImageStorage
from pynetdicom import build_context

from core import audit
from core.models import AuditEvent
from pacs.models import Instance, Series, Study
from pacs.services import add_node
from ris.models import Patient, PatientIdentifier
from tests import dicom_factory as make
from tests.archive import association, running_archive, store

pytestmark = pytest.mark.django_db(transaction=True)

STATUS_SUCCESS = 0x0000


@pytest.fixture
def archive():  # type: ignore[no-untyped-def]
    with running_archive() as port:
        yield port


def _stored_bytes(instance: Instance) -> bytes:
    return (Path(settings.STORAGE_DIR) / instance.file_path).read_bytes()


def test_a_series_is_stored_indexed_and_kept_byte_for_byte(archive: int) -> None:
    datasets = make.series(3, patient_name="Storecase^Robin", patient_id="ST001")
    statuses = store(archive, datasets)
    assert [s.Status for s in statuses] == [STATUS_SUCCESS] * 3
    study = Study.objects.get()
    assert (study.number_of_series, study.number_of_instances) == (1, 3)
    assert study.modalities_in_study == "\\CT\\"
    assert study.patient_name == "Storecase^Robin"
    assert Series.objects.get().number_of_instances == 3
    patient = Patient.objects.get()
    assert patient.family_name == "Storecase"
    assert PatientIdentifier.objects.get().value == "ST001"
    for ds in datasets:
        instance = Instance.objects.get(sop_instance_uid=ds.SOPInstanceUID)
        raw = _stored_bytes(instance)
        assert raw.endswith(make.encoded(ds))  # the dataset exactly as sent, after the file meta
        meta = dcmread(Path(settings.STORAGE_DIR) / instance.file_path).file_meta
        assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert meta.SourceApplicationEntityTitle == "TESTSCU"
    assert study.size_bytes == sum(i.file_size for i in Instance.objects.all())


def test_the_same_instance_again_is_kept_once(archive: int) -> None:
    ds = make.ct_instance()
    store(archive, [ds])
    first = _stored_bytes(Instance.objects.get())
    statuses = store(archive, [ds])
    assert statuses[0].Status == STATUS_SUCCESS
    assert Instance.objects.count() == 1
    assert Study.objects.get().number_of_instances == 1
    assert _stored_bytes(Instance.objects.get()) == first


def test_duplicate_policy_reject_answers_a_failure(archive: int, settings) -> None:  # type: ignore[no-untyped-def]
    ds = make.ct_instance()
    store(archive, [ds])
    settings.DICOM_DUPLICATE_POLICY = "reject"
    status = store(archive, [ds])[0]
    assert status.Status == 0x0111
    assert "already stored" in status.ErrorComment
    assert Instance.objects.count() == 1


def test_missing_uid_is_refused_and_nothing_is_kept(archive: int) -> None:
    bad = make.ct_instance()
    del bad.SeriesInstanceUID
    good = make.ct_instance()
    statuses = store(archive, [bad, good])
    assert statuses[0].Status == 0xC000
    assert "SeriesInstanceUID is missing" in statuses[0].ErrorComment
    assert statuses[1].Status == STATUS_SUCCESS  # the association goes on
    assert Instance.objects.count() == 1
    stored_files = list(Path(settings.STORAGE_DIR).rglob("*.dcm"))
    assert len(stored_files) == 1


def test_sop_class_that_does_not_match_the_context_is_refused() -> None:
    from pacs.services import REASON_SOP_CLASS_MISMATCH, IngestError, ingest_instance

    ds = make.ct_instance(sop_class=MRImageStorage)
    with pytest.raises(IngestError) as refused:
        ingest_instance(
            make.encoded(ds),
            transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
            context_sop_class="1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
        )
    assert refused.value.reason == REASON_SOP_CLASS_MISMATCH
    assert Instance.objects.count() == 0
    assert not list(Path(settings.STORAGE_DIR).rglob("*.dcm"))


def test_implicit_little_endian_and_non_ascii_names(archive: int) -> None:
    ds = make.ct_instance(
        patient_name="Müller^Jürgen", charset="ISO_IR 100", transfer_syntax=ImplicitVRLittleEndian
    )
    assert store(archive, [ds])[0].Status == STATUS_SUCCESS
    study = Study.objects.get()
    assert study.patient_name == "Müller^Jürgen"
    assert study.patient_name_match == "MÜLLER^JÜRGEN"
    assert Instance.objects.get().transfer_syntax_uid == ImplicitVRLittleEndian


def test_the_same_patient_id_from_two_issuers_is_two_patients(archive: int) -> None:
    store(archive, [make.ct_instance(patient_id="SAME1", issuer="HOSP_A")])
    store(archive, [make.ct_instance(patient_id="SAME1", issuer="HOSP_B")])
    store(archive, [make.ct_instance(patient_id="SAME1", issuer="HOSP_A")])
    assert Patient.objects.count() == 2
    assert Study.objects.count() == 3


def test_unknown_calling_ae_is_rejected_and_audited(archive: int, settings) -> None:  # type: ignore[no-untyped-def]
    settings.DICOM_ACCEPT_UNKNOWN_AE = False
    add_node("KNOWNMOD", "127.0.0.1", 104)
    with association(archive, [build_context("1.2.840.10008.1.1")], ae_title="STRANGER") as assoc:
        assert assoc.is_rejected
    with association(archive, [build_context("1.2.840.10008.1.1")], ae_title="KNOWNMOD") as assoc:
        assert assoc.is_established
        assert assoc.send_c_echo().Status == STATUS_SUCCESS
    # The listener's audit writer commits these a moment after the fact, and always before
    # the association ends on the listener's side, which may be after the peer's view of it.
    assert audit.flush()
    events = {(e.actor_name, e.outcome) for e in AuditEvent.objects.filter(action="association")}
    assert ("STRANGER", "failure") in events
    assert ("KNOWNMOD", "success") in events


def test_each_rejection_is_audited_with_its_reason(settings) -> None:  # type: ignore[no-untyped-def]
    settings.DICOM_ACCEPT_UNKNOWN_AE = False
    settings.DICOM_MAX_ASSOCIATIONS = 1
    add_node("KNOWNMOD", "127.0.0.1", 104)
    echo = [build_context("1.2.840.10008.1.1")]
    with running_archive() as port, association(port, echo, ae_title="KNOWNMOD") as first:
        assert first.is_established
        with association(port, echo, ae_title="KNOWNMOD") as second:
            assert second.is_rejected  # one at a time
        assert first.send_c_echo().Status == STATUS_SUCCESS
    settings.DICOM_MAX_ASSOCIATIONS = 10  # a rejected peer's thread may still be counted
    with running_archive() as port:
        with association(port, echo, ae_title="STRANGER") as assoc:
            assert assoc.is_rejected  # negotiated by core.dicom_lean
        storage = [build_context("1.2.840.10008.5.1.4.1.1.2")]
        with association(port, storage, ae_title="STRANGER2") as assoc:
            assert assoc.is_rejected  # negotiated by pynetdicom
    assert audit.flush()
    known = "is not a known node (permanent)"
    refused = AuditEvent.objects.filter(action="association", outcome="failure")
    assert {(e.actor_name, e.detail) for e in refused} == {
        ("STRANGER", f"rejected: calling AE title not recognised: {'STRANGER'!r} {known}"),
        ("STRANGER2", f"rejected: calling AE title not recognised: {'STRANGER2'!r} {known}"),
        ("KNOWNMOD", "rejected: local limit exceeded: at most 1 associations at once (transient)"),
    }


def test_node_without_store_right_is_refused(archive: int, settings) -> None:  # type: ignore[no-untyped-def]
    settings.DICOM_ACCEPT_UNKNOWN_AE = False
    add_node("VIEWONLY", "127.0.0.1", 104, may_store=False)
    status = store(archive, [make.ct_instance()], ae_title="VIEWONLY")[0]
    assert status.Status == 0x0124
    assert Instance.objects.count() == 0


def test_garbage_on_the_socket_does_not_stop_the_server(archive: int) -> None:
    # An A-ASSOCIATE-RQ header that promises more than it sends, then a bogus P-DATA PDU.
    for payload in (
        b"\x01\x00\x00\x00\x10\x00" + b"\x00" * 4,
        b"\x04\x00\x00\x00\x00\x08" + b"\xff" * 8,
    ):
        with socket.create_connection(("127.0.0.1", archive), timeout=10) as sock:
            sock.sendall(payload)
    assert store(archive, [make.ct_instance()])[0].Status == STATUS_SUCCESS


@pytest.mark.parametrize("cut", [10, 200, 400])
def test_a_truncated_dataset_is_refused_with_a_reason(cut: int) -> None:
    from pacs.services import REASON_UNREADABLE, IngestError, ingest_instance

    ds = make.ct_instance()
    encoded = make.encoded(ds)
    with pytest.raises(IngestError) as refused:
        ingest_instance(encoded[:cut], transfer_syntax=str(ds.file_meta.TransferSyntaxUID))
    assert refused.value.reason == REASON_UNREADABLE
    assert refused.value.comment
    assert Instance.objects.count() == 0
    assert not list(Path(settings.STORAGE_DIR).rglob("*.dcm"))


def test_malformed_p_data_inside_an_association_aborts_only_that_one(archive: int) -> None:
    context = build_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1"])
    with association(archive, [context]) as assoc:
        assert assoc.is_established
        # A P-DATA-TF PDU whose PDV item claims more bytes than the PDU holds.
        garbage = b"\x04\x00\x00\x00\x00\x0a" + b"\x00\x00\x00\xff\x01\x03" + b"\xde\xad\xbe\xef"
        assoc.dul.socket.socket.sendall(garbage)
        deadline = time.monotonic() + 20
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not assoc.is_established  # the archive aborted it
    assert store(archive, [make.ct_instance()])[0].Status == STATUS_SUCCESS


def test_a_truncated_dataset_over_the_network_gets_a_failure_status(archive: int) -> None:
    from io import BytesIO

    from pynetdicom.dimse_primitives import C_STORE

    ds = make.ct_instance()
    context = build_context(ds.SOPClassUID, [str(ds.file_meta.TransferSyntaxUID)])
    with association(archive, [context]) as assoc:
        request = C_STORE()
        request.MessageID = 1
        request.AffectedSOPClassUID = ds.SOPClassUID
        request.AffectedSOPInstanceUID = ds.SOPInstanceUID
        request.Priority = 2
        request.DataSet = BytesIO(make.encoded(ds)[:300])  # cut inside an element
        context_id = assoc.accepted_contexts[0].context_id
        # Pause the requestor's own reactor so that the response comes to us (as send_* do).
        assoc._reactor_checkpoint.clear()
        while not assoc._is_paused:
            time.sleep(0.001)
        try:
            assoc.dimse.send_msg(request, context_id)
            _, response = assoc.dimse.get_msg(block=True)
        finally:
            assoc._reactor_checkpoint.set()
        assert response.Status == 0xC000
        assert response.ErrorComment
    assert store(archive, [make.ct_instance()])[0].Status == STATUS_SUCCESS
    assert Instance.objects.count() == 1
