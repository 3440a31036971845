"""Storage Commitment Push Model (PS3.4 Annex J): N-ACTION in, N-EVENT-REPORT out on a new
association to the requesting node, naming what the archive holds and what it does not."""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import Retry
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage
from pynetdicom import AE, build_context, evt
from pynetdicom.events import Event

from core.dicom_server import BEAT_TASK_PREFIXES
from core.listeners import BeatStandIn
from pacs import commitment, tasks
from pacs.models import Instance, StorageCommitment
from pacs.services import add_node
from tests import dicom_factory as make
from tests.archive import ARCHIVE_AE, association, running_archive, store
from tests.netutil import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

PUSH_MODEL = commitment.STORAGE_COMMITMENT_PUSH_MODEL
PUSH_MODEL_INSTANCE = commitment.STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE
MODALITY_AE = "MODALITY"
STATUS_SUCCESS = 0x0000
STATUS_REFUSED_NOT_AUTHORIZED = 0x0124
INVALID_ARGUMENT_VALUE = 0x0115
NO_SUCH_ACTION = 0x0123
NO_SUCH_SOP_INSTANCE = 0x0112
PROCESSING_FAILURE = 0x0110
CLASS_INSTANCE_CONFLICT = 0x0119


@dataclass
class Report:
    event_type_id: int
    information: Dataset
    calling_ae_title: str
    our_roles: tuple[bool, bool]  # the modality's (SCU, SCP) roles on the negotiated context


class Modality:
    """The modality's own listener: takes Storage Commitment results as the Push Model's SCU."""

    def __init__(self, ae_title: str = MODALITY_AE) -> None:
        self.reports: list[Report] = []
        self.ae = AE(ae_title=ae_title)
        # PS3.4 J.3.3.1.3: accept the archive as SCP on an association it requests.
        self.ae.add_supported_context(PUSH_MODEL, scu_role=False, scp_role=True)
        server = self.ae.start_server(
            ("127.0.0.1", 0),
            block=False,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report)],
        )
        assert server is not None
        self.port = int(server.server_address[1])

    def _on_report(self, event: Event) -> tuple[int, None]:
        context = next(
            cx for cx in event.assoc.accepted_contexts if cx.abstract_syntax == PUSH_MODEL
        )
        self.reports.append(
            Report(
                event_type_id=int(event.request.EventTypeID),  # type: ignore[union-attr]
                information=event.event_information,
                calling_ae_title=str(event.assoc.requestor.ae_title).strip(),
                our_roles=(bool(context.as_scu), bool(context.as_scp)),
            )
        )
        return STATUS_SUCCESS, None

    def close(self) -> None:
        self.ae.shutdown()


@pytest.fixture
def archive(eager: None) -> Iterator[int]:
    with running_archive() as port:
        yield port


@pytest.fixture
def modality() -> Iterator[Modality]:
    listener = Modality()
    add_node(MODALITY_AE, "127.0.0.1", listener.port)
    yield listener
    listener.close()


def _free_port() -> int:
    """A port with nothing listening on it (the node that is away)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def request_item(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def action_information(transaction_uid: str, references: list[tuple[str, str]]) -> Dataset:
    information = Dataset()
    information.TransactionUID = transaction_uid
    information.ReferencedSOPSequence = [request_item(c, i) for c, i in references]
    return information


def references_of(datasets: list[Dataset]) -> list[tuple[str, str]]:
    return [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in datasets]


def send_action(assoc: Any, information: Dataset | None, action_type: int = 1) -> Dataset:
    status, _ = assoc.send_n_action(information, action_type, PUSH_MODEL, PUSH_MODEL_INSTANCE)
    return status


def request_commitment(
    port: int, information: Dataset, ae_title: str = MODALITY_AE, action_type: int = 1
) -> Dataset:
    with association(port, [build_context(PUSH_MODEL)], ae_title) as assoc:
        assert assoc.is_established
        return send_action(assoc, information, action_type)


def sent(transaction_uid: str) -> StorageCommitment:
    """Wait until the result of TRANSACTION_UID has been sent (or has failed), and return it."""

    def done() -> StorageCommitment | None:
        return (
            StorageCommitment.objects.filter(transaction_uid=transaction_uid)
            .exclude(status=StorageCommitment.Status.PENDING)
            .first()
        )

    return wait_until(done, what=f"the result of {transaction_uid}")


def report_for(modality: Modality, transaction_uid: str) -> Report:
    sent(transaction_uid)
    matching = [r for r in modality.reports if r.information.TransactionUID == transaction_uid]
    assert len(matching) == 1, f"{len(matching)} reports for {transaction_uid}"
    return matching[0]


def uids(sequence: Any) -> list[str]:
    return [str(item.ReferencedSOPInstanceUID) for item in sequence]


def test_stored_instances_are_committed_and_an_unknown_one_is_not(
    archive: int, modality: Modality
) -> None:
    datasets = make.series(3, patient_id="SC0001")
    assert [s.Status for s in store(archive, datasets, ae_title=MODALITY_AE)] == [0] * 3
    never_stored = (str(datasets[0].SOPClassUID), make.uid())
    transaction_uid = make.uid()

    status = request_commitment(
        archive, action_information(transaction_uid, [*references_of(datasets), never_stored])
    )

    assert status.Status == STATUS_SUCCESS
    report = report_for(modality, transaction_uid)
    assert report.event_type_id == commitment.EVENT_FAILURES_EXIST
    assert uids(report.information.ReferencedSOPSequence) == [ds.SOPInstanceUID for ds in datasets]
    assert report.information.RetrieveAETitle == ARCHIVE_AE
    [failed] = report.information.FailedSOPSequence
    assert failed.ReferencedSOPInstanceUID == never_stored[1]
    assert failed.ReferencedSOPClassUID == never_stored[0]
    assert failed.FailureReason == NO_SUCH_SOP_INSTANCE
    # A new association, from the AE title the request was sent to, with us as the SCP.
    assert report.calling_ae_title == ARCHIVE_AE
    assert report.our_roles == (True, False)
    record = StorageCommitment.objects.get()
    assert (record.status, record.event_type_id, record.attempts) == ("sent", 2, 1)
    assert record.failures == [[never_stored[0], never_stored[1], NO_SUCH_SOP_INSTANCE]]
    assert record.calling_ae_title == MODALITY_AE
    assert record.sent_at is not None


def test_all_of_them_stored_is_event_type_1(archive: int, modality: Modality) -> None:
    datasets = make.series(2)
    store(archive, datasets, ae_title=MODALITY_AE)
    transaction_uid = make.uid()
    assert (
        request_commitment(
            archive, action_information(transaction_uid, references_of(datasets))
        ).Status
        == STATUS_SUCCESS
    )
    report = report_for(modality, transaction_uid)
    assert report.event_type_id == commitment.EVENT_ALL_COMMITTED
    assert uids(report.information.ReferencedSOPSequence) == [ds.SOPInstanceUID for ds in datasets]
    assert "FailedSOPSequence" not in report.information


def test_files_gone_or_cut_short_behind_the_archives_back_are_not_committed(
    archive: int, modality: Modality
) -> None:
    deleted, truncated, intact, other_class = make.series(4)
    store(archive, [deleted, truncated, intact, other_class], ae_title=MODALITY_AE)
    wait_until(lambda: Instance.objects.count() == 4 or None, what="the instances indexed")
    root = Path(settings.STORAGE_DIR)
    (root / Instance.objects.get(sop_instance_uid=deleted.SOPInstanceUID).file_path).unlink()
    cut = root / Instance.objects.get(sop_instance_uid=truncated.SOPInstanceUID).file_path
    cut.write_bytes(cut.read_bytes()[:-10])
    references = [
        *references_of([deleted, truncated, intact]),
        (str(MRImageStorage), str(other_class.SOPInstanceUID)),  # stored as CT
    ]
    transaction_uid = make.uid()

    assert (
        request_commitment(archive, action_information(transaction_uid, references)).Status
        == STATUS_SUCCESS
    )

    report = report_for(modality, transaction_uid)
    assert report.event_type_id == commitment.EVENT_FAILURES_EXIST
    assert uids(report.information.ReferencedSOPSequence) == [intact.SOPInstanceUID]
    reasons = {
        item.ReferencedSOPInstanceUID: item.FailureReason
        for item in report.information.FailedSOPSequence
    }
    assert reasons == {
        deleted.SOPInstanceUID: PROCESSING_FAILURE,
        truncated.SOPInstanceUID: PROCESSING_FAILURE,
        other_class.SOPInstanceUID: CLASS_INSTANCE_CONFLICT,
    }


def test_bad_requests_get_a_failure_status_and_the_server_keeps_serving(
    archive: int, modality: Modality
) -> None:
    ct = str(make.ct_instance().SOPClassUID)
    no_transaction = action_information(make.uid(), [(ct, make.uid())])
    del no_transaction.TransactionUID
    no_references = Dataset()
    no_references.TransactionUID = make.uid()
    item_without_uid = action_information(make.uid(), [(ct, make.uid())])
    del item_without_uid.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    twice = make.uid()
    referenced_twice = action_information(make.uid(), [(ct, twice), (ct, twice)])
    good_uid = make.uid()

    with association(archive, [build_context(PUSH_MODEL)], MODALITY_AE) as assoc:
        statuses = [
            send_action(assoc, no_transaction),
            send_action(assoc, no_references),
            send_action(assoc, item_without_uid),
            send_action(assoc, referenced_twice),
            send_action(assoc, None),
            send_action(assoc, action_information(make.uid(), [(ct, make.uid())]), 2),
            send_action(assoc, action_information(good_uid, [(ct, make.uid())])),
        ]

    assert [s.Status for s in statuses] == [
        *[INVALID_ARGUMENT_VALUE] * 5,
        NO_SUCH_ACTION,
        STATUS_SUCCESS,
    ]
    assert "TransactionUID" in statuses[0].ErrorComment
    assert "ReferencedSOPSequence" in statuses[1].ErrorComment
    assert "item 1" in statuses[2].ErrorComment
    assert "twice" in statuses[3].ErrorComment
    assert all(len(s.ErrorComment) <= 64 for s in statuses[:6])
    # Only the good one was recorded, and it is answered.
    assert list(StorageCommitment.objects.values_list("transaction_uid", flat=True)) == [good_uid]
    assert report_for(modality, good_uid).event_type_id == commitment.EVENT_FAILURES_EXIST


def test_unknown_and_non_storing_nodes_are_refused(archive: int) -> None:
    add_node("VIEWONLY", "127.0.0.1", _free_port(), may_store=False)
    information = action_information(make.uid(), [(str(MRImageStorage), make.uid())])
    for ae_title in ("STRANGER", "VIEWONLY"):  # STRANGER may associate (tests accept any AE)
        status = request_commitment(archive, information, ae_title=ae_title)
        assert status.Status == STATUS_REFUSED_NOT_AUTHORIZED
        assert status.ErrorComment
    assert not StorageCommitment.objects.exists()


def test_an_unreachable_node_keeps_the_result_pending_and_a_reused_uid_is_refused(
    archive: int,
) -> None:
    add_node(MODALITY_AE, "127.0.0.1", _free_port())
    ct = str(make.ct_instance().SOPClassUID)
    transaction_uid = make.uid()
    information = action_information(transaction_uid, [(ct, make.uid())])
    assert request_commitment(archive, information).Status == STATUS_SUCCESS

    def tried() -> StorageCommitment | None:
        return StorageCommitment.objects.filter(attempts=1).first()

    record = wait_until(tried, what="the first attempt to send the result")
    assert record.status == StorageCommitment.Status.PENDING
    assert record.last_error
    assert record.next_attempt_at > timezone.now() + dt.timedelta(seconds=20)
    # The same request again (its response lost): the same record, one result to come.
    assert request_commitment(archive, information).Status == STATUS_SUCCESS
    # The same Transaction UID for other instances: refused.
    other = action_information(transaction_uid, [(ct, make.uid())])
    status = request_commitment(archive, other)
    assert status.Status == INVALID_ARGUMENT_VALUE
    assert "TransactionUID" in status.ErrorComment
    assert StorageCommitment.objects.count() == 1


def test_with_a_broker_the_task_is_queued_and_retries_with_backoff(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.CELERY_TASK_ALWAYS_EAGER = False
    queued: list[int] = []
    monkeypatch.setattr(tasks.send_commitment_report, "delay", queued.append)
    countdowns: list[float] = []

    def retry(countdown: float) -> Retry:
        countdowns.append(countdown)
        return Retry()

    monkeypatch.setattr(tasks.send_commitment_report, "retry", retry)
    monkeypatch.setattr(commitment, "MAX_ATTEMPTS", 3)
    add_node(MODALITY_AE, "127.0.0.1", _free_port())
    request = commitment.CommitmentRequest(make.uid(), [(str(MRImageStorage), make.uid())])

    record = commitment.record_request(
        request, calling_ae_title=MODALITY_AE, called_ae_title=ARCHIVE_AE
    )

    assert queued == [record.pk]  # handed to the worker once the record committed
    for attempt in (1, 2):
        with pytest.raises(Retry):
            tasks.send_commitment_report(record.pk)
        record.refresh_from_db()
        assert (record.status, record.attempts) == ("pending", attempt)
        assert commitment.sweep() == []  # not due yet: nothing for the beat to do
        StorageCommitment.objects.filter(pk=record.pk).update(next_attempt_at=timezone.now())
    assert countdowns == [commitment.RETRY_DELAY, 2 * commitment.RETRY_DELAY]
    assert commitment.sweep() == [record.pk]
    assert queued == [record.pk, record.pk]

    assert tasks.send_commitment_report(record.pk) == "failed"

    record.refresh_from_db()
    assert (record.status, record.attempts) == ("failed", 3)
    assert record.last_error.startswith("given up after 3 attempts")
    assert tasks.send_commitment_report(record.pk) == "skipped"  # nothing left to send


def test_a_node_no_longer_known_fails_the_result_at_once(settings: Any) -> None:
    settings.CELERY_TASK_ALWAYS_EAGER = False
    node = add_node(MODALITY_AE, "127.0.0.1", _free_port())
    request = commitment.CommitmentRequest(make.uid(), [(str(MRImageStorage), make.uid())])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tasks.send_commitment_report, "delay", lambda _pk: None)
        record = commitment.record_request(
            request, calling_ae_title=MODALITY_AE, called_ae_title=ARCHIVE_AE
        )
    node.delete()
    assert commitment.deliver_report(record.pk).outcome == "failed"
    record.refresh_from_db()
    assert "no longer a known node" in record.last_error


def test_the_admin_lists_results_and_sends_failed_ones_again(
    personas: Any, login: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.CELERY_TASK_ALWAYS_EAGER = False
    queued: list[int] = []
    monkeypatch.setattr(tasks.send_commitment_report, "delay", queued.append)
    add_node(MODALITY_AE, "127.0.0.1", _free_port())
    request = commitment.CommitmentRequest(make.uid(), [(str(MRImageStorage), make.uid())])
    record = commitment.record_request(
        request, calling_ae_title=MODALITY_AE, called_ae_title=ARCHIVE_AE
    )
    StorageCommitment.objects.filter(pk=record.pk).update(status="failed", attempts=30)
    url = "/admin/pacs/storagecommitment/"
    superuser = Client()
    superuser.force_login(User.objects.create_superuser("root", "root@example.org", "x"))

    page = superuser.get(url)
    assert page.status_code == 200
    assert request.transaction_uid in page.content.decode()
    superuser.post(url, {"action": "send_again", "_selected_action": [record.pk]})

    record.refresh_from_db()
    assert (record.status, record.attempts) == ("pending", 0)
    assert queued == [record.pk, record.pk]
    # The administrator role may read the requests; the front desk may not.
    assert login(personas.admin).get(url).status_code == 200
    assert login(personas.front_desk).get(url).status_code in (302, 403)


def test_without_a_broker_the_dicom_listener_sweeps_the_results_itself(settings: Any) -> None:
    settings.CELERY_TASK_ALWAYS_EAGER = True
    add_node(MODALITY_AE, "127.0.0.1", _free_port())
    request = commitment.CommitmentRequest(make.uid(), [(str(MRImageStorage), make.uid())])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(commitment, "queue_report", lambda *_args, **_kwargs: None)  # lost
        record = commitment.record_request(
            request, calling_ae_title=MODALITY_AE, called_ae_title=ARCHIVE_AE
        )
    assert record.attempts == 0
    sweeper = BeatStandIn(BEAT_TASK_PREFIXES, interval=0.05)
    assert set(sweeper.entries) == {
        "pacs.tasks.sweep_commitment_reports",
        "pacs.tasks.sweep_header_rewrites",
    }
    sweeper.start()
    try:
        wait_until(
            lambda: StorageCommitment.objects.filter(pk=record.pk, attempts__gte=1).first(),
            what="the stand-in for beat to try sending the result",
        )
    finally:
        sweeper.stop()
