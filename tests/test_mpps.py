"""The MPPS SCP (PS3.4 F.7): N-CREATE and N-SET from a pynetdicom SCU, and what the RIS shows."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID, generate_uid
from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]

from core.models import AuditEvent
from ris import services
from ris.models import Order, RequestedProcedure, ScheduledProcedureStep
from tests import factories
from tests.mwl_query import worklist_query
from tests.worklist_scu import (
    WORKLIST_SERVICES,
    association,
    find,
    mpps_completed,
    mpps_in_progress,
    n_create,
    n_set,
    running_scp,
)
from worklist.dimse import (
    ERROR_ID_MAY_NO_LONGER_BE_UPDATED,
    STATUS_ATTRIBUTE_VALUE_OUT_OF_RANGE,
    STATUS_DUPLICATE_SOP_INSTANCE,
    STATUS_INVALID_ATTRIBUTE_VALUE,
    STATUS_MISSING_ATTRIBUTE,
    STATUS_MISSING_ATTRIBUTE_VALUE,
    STATUS_NO_SUCH_OBJECT_INSTANCE,
    STATUS_PROCESSING_FAILURE,
    STATUS_SUCCESS,
)
from worklist.models import PerformedProcedureStep

pytestmark = pytest.mark.django_db(transaction=True)

START = dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC)  # 10:00 in the department


@pytest.fixture(autouse=True)
def _department(settings: Any) -> None:
    settings.TIME_ZONE = "Europe/Berlin"
    settings.DICOM_SERVICES = WORKLIST_SERVICES


@pytest.fixture
def scp() -> Iterator[int]:
    with running_scp() as (_, port):
        yield port


@pytest.fixture
def order() -> Order:
    patient = factories.patient(
        "Müller", "Hans", identifiers=[services.IdentifierInput("M-1", "HOSP_A")]
    )
    return factories.order(patient, start=START, in_room=factories.room())


def worklist_item(port: int, order: Order) -> Dataset:
    (item,), _ = find(port, worklist_query(AccessionNumber=order.accession_number))
    return item


def step_of(order: Order) -> ScheduledProcedureStep:
    return ScheduledProcedureStep.objects.get(requested_procedure__order=order)


def started(port: int, item: Dataset | Order, **kwargs: Any) -> str:
    """N-CREATE IN PROGRESS for a worklist item (or the order's, fetched by C-FIND)."""
    if isinstance(item, Order):
        item = worklist_item(port, item)
    status, uid = n_create(port, mpps_in_progress(item, **kwargs))
    assert status.Status == STATUS_SUCCESS, status
    return uid


def test_in_progress_then_completed_moves_the_order(scp: int, order: Order) -> None:
    uid = started(scp, order)
    order.refresh_from_db()
    assert order.status == Order.Status.IN_PROGRESS
    assert step_of(order).status == ScheduledProcedureStep.Status.IN_PROGRESS
    performed = PerformedProcedureStep.objects.get(sop_instance_uid=uid)
    assert performed.status == PerformedProcedureStep.Status.IN_PROGRESS
    assert performed.performed_station_ae_title == "CT1"
    assert performed.performed_station_name == "CT ROOM 1"
    # 10:15 in Berlin, stored in UTC.
    assert performed.started_at == dt.datetime(2026, 1, 5, 9, 15, tzinfo=dt.UTC)
    assert list(performed.scheduled_steps.all()) == [step_of(order)]
    assert performed.patient_name == "Müller^Hans"
    assert not performed.needs_reconciliation

    status = n_set(scp, uid, mpps_completed(series=2))
    assert status.Status == STATUS_SUCCESS
    order.refresh_from_db()
    assert order.status == Order.Status.COMPLETED
    assert step_of(order).status == ScheduledProcedureStep.Status.COMPLETED
    assert order.requested_procedures.get().status == RequestedProcedure.Status.COMPLETED
    performed.refresh_from_db()
    assert performed.status == PerformedProcedureStep.Status.COMPLETED
    assert performed.ended_at == dt.datetime(2026, 1, 5, 9, 30, tzinfo=dt.UTC)
    assert [series["series_description"] for series in performed.performed_series] == [
        "Series 1",
        "Series 2",
    ]
    assert len(performed.performed_series[0]["instances"]) == 1
    assert UID(performed.performed_series[0]["series_instance_uid"]).is_valid

    # The order's trail and the MPPS's own, by the modality's AE title, over DICOM.
    trail = AuditEvent.objects.filter(channel="dicom", actor_name="CT1")
    assert trail.filter(object_type="ris.order", detail__startswith="exam started").exists()
    assert trail.filter(object_type="ris.order", detail__startswith="exam completed").exists()
    assert (
        trail.filter(
            object_type="worklist.performedprocedurestep", patient_key=str(order.patient_id)
        ).count()
        == 2
    )


def test_an_ended_step_may_no_longer_be_updated(scp: int, order: Order) -> None:
    uid = started(scp, order)
    assert n_set(scp, uid, mpps_completed()).Status == STATUS_SUCCESS
    status = n_set(scp, uid, mpps_completed(status="DISCONTINUED"))
    # PS3.4 F.7.2.2.3 and Table F.7.2-2.
    assert status.Status == STATUS_PROCESSING_FAILURE
    assert status.ErrorID == ERROR_ID_MAY_NO_LONGER_BE_UPDATED
    assert status.ErrorComment == "Performed Procedure Step Object may no longer be updated"
    assert PerformedProcedureStep.objects.get(sop_instance_uid=uid).status == "completed"


def test_unknown_and_duplicate_instances(scp: int, order: Order) -> None:
    status = n_set(scp, generate_uid(), mpps_completed())
    assert status.Status == STATUS_NO_SUCH_OBJECT_INSTANCE
    item = worklist_item(scp, order)
    uid = started(scp, item)
    status, _ = n_create(scp, mpps_in_progress(item), uid)
    assert status.Status == STATUS_DUPLICATE_SOP_INSTANCE
    assert PerformedProcedureStep.objects.count() == 1


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # the bad values are the point
@pytest.mark.parametrize(
    ("change", "expected_status", "comment"),
    [
        (
            lambda ds: setattr(ds, "PerformedProcedureStepStatus", "COMPLETED"),
            STATUS_INVALID_ATTRIBUTE_VALUE,
            "IN PROGRESS",
        ),
        (
            lambda ds: setattr(ds, "PerformedProcedureStepStatus", "STARTED"),
            STATUS_INVALID_ATTRIBUTE_VALUE,
            "STARTED",
        ),
        (
            lambda ds: delattr(ds, "PerformedStationAETitle"),
            STATUS_MISSING_ATTRIBUTE,
            "PerformedStationAETitle",
        ),
        (
            lambda ds: delattr(ds, "ScheduledStepAttributesSequence"),
            STATUS_MISSING_ATTRIBUTE,
            "ScheduledStepAttributesSequence",
        ),
        (lambda ds: setattr(ds, "Modality", ""), STATUS_MISSING_ATTRIBUTE_VALUE, "Modality"),
        (
            lambda ds: setattr(ds, "PerformedProcedureStepStartDate", "20261305"),
            STATUS_INVALID_ATTRIBUTE_VALUE,
            "not a valid date",
        ),
        (
            lambda ds: delattr(ds.ScheduledStepAttributesSequence[0], "StudyInstanceUID"),
            STATUS_MISSING_ATTRIBUTE,
            "StudyInstanceUID",
        ),
    ],
)
def test_a_bad_n_create_is_refused_and_changes_nothing(
    scp: int, order: Order, change: Any, expected_status: int, comment: str
) -> None:
    attributes = mpps_in_progress(worklist_item(scp, order))
    change(attributes)
    status, _ = n_create(scp, attributes)
    assert status.Status == expected_status
    assert comment in status.ErrorComment
    assert not PerformedProcedureStep.objects.exists()
    order.refresh_from_db()
    assert order.status == Order.Status.SCHEDULED


def test_completion_needs_the_end_and_the_series(scp: int, order: Order) -> None:
    uid = started(scp, order)
    no_end = mpps_completed()
    no_end.PerformedProcedureStepEndTime = ""
    status = n_set(scp, uid, no_end)
    assert status.Status == STATUS_MISSING_ATTRIBUTE_VALUE
    assert Tag(status.AttributeIdentifierList) == Tag("PerformedProcedureStepEndTime")
    no_series = mpps_completed(series=0)
    status = n_set(scp, uid, no_series)
    assert status.Status == STATUS_MISSING_ATTRIBUTE_VALUE
    assert "PerformedSeriesSequence" in status.ErrorComment
    # Nothing changed: the step is still running and can still be completed.
    order.refresh_from_db()
    assert order.status == Order.Status.IN_PROGRESS
    assert n_set(scp, uid, mpps_completed()).Status == STATUS_SUCCESS


def test_n_set_may_not_change_what_n_create_set(scp: int, order: Order) -> None:
    uid = started(scp, order)
    other_patient = mpps_completed()
    other_patient.PatientID = "SOMEONE-ELSE"
    status = n_set(scp, uid, other_patient)
    assert status.Status == STATUS_INVALID_ATTRIBUTE_VALUE
    assert Tag(status.AttributeIdentifierList) == Tag("PatientID")
    # Sent again unchanged, as some modalities do: accepted.
    same_patient = mpps_completed()
    same_patient.PatientID = "M-1"
    same_patient.PerformedStationAETitle = "CT1"
    assert n_set(scp, uid, same_patient).Status == STATUS_SUCCESS


def test_an_intermediate_n_set_keeps_the_step_running(scp: int, order: Order) -> None:
    uid = started(scp, order)
    progress = Dataset()
    progress.PerformedProcedureStepDescription = "CT head and neck"
    assert n_set(scp, uid, progress).Status == STATUS_SUCCESS
    performed = PerformedProcedureStep.objects.get(sop_instance_uid=uid)
    assert performed.status == PerformedProcedureStep.Status.IN_PROGRESS
    assert performed.description == "CT head and neck"
    assert Dataset.from_json(performed.attributes).PerformedStationAETitle == "CT1"


def test_discontinued_with_its_reason(scp: int, order: Order) -> None:
    uid = started(scp, order)
    reason = ("110514", "DCM", "Incorrect procedure ordered")
    status = n_set(scp, uid, mpps_completed(status="DISCONTINUED", series=0, reason=reason))
    assert status.Status == STATUS_SUCCESS
    assert step_of(order).status == ScheduledProcedureStep.Status.DISCONTINUED
    performed = PerformedProcedureStep.objects.get(sop_instance_uid=uid)
    assert performed.discontinuation_reason == "Incorrect procedure ordered (110514, DCM)"
    assert AuditEvent.objects.filter(
        object_type="ris.order", detail__contains="Incorrect procedure ordered"
    ).exists()


def test_an_end_before_the_start_is_accepted_with_a_warning(scp: int, order: Order) -> None:
    uid = started(scp, order)
    status = n_set(scp, uid, mpps_completed(end_time="090000"))
    assert status.Status == STATUS_ATTRIBUTE_VALUE_OUT_OF_RANGE
    order.refresh_from_db()
    assert order.status == Order.Status.COMPLETED


def test_an_unscheduled_step_is_kept_for_reconciliation(scp: int, order: Order) -> None:
    status, uid = n_create(scp, mpps_in_progress(None))
    assert status.Status == STATUS_SUCCESS
    performed = PerformedProcedureStep.objects.get(sop_instance_uid=uid)
    assert performed.needs_reconciliation
    assert performed.reconciliation_reason.startswith("unscheduled")
    assert performed.patient_id == "WALKIN1"
    assert not performed.scheduled_steps.exists()
    assert n_set(scp, uid, mpps_completed()).Status == STATUS_SUCCESS
    order.refresh_from_db()
    assert order.status == Order.Status.SCHEDULED  # nobody else's exam moved


def test_a_step_of_a_cancelled_order_is_kept_and_flagged(scp: int, order: Order) -> None:
    item = worklist_item(scp, order)
    services.cancel_order(order, "patient moved away")
    status, uid = n_create(scp, mpps_in_progress(item))
    assert status.Status == STATUS_SUCCESS
    performed = PerformedProcedureStep.objects.get(sop_instance_uid=uid)
    assert performed.needs_reconciliation
    assert "Cancelled" in performed.reconciliation_reason
    order.refresh_from_db()
    assert order.status == Order.Status.CANCELLED


def test_no_uid_in_the_request_gets_one_from_the_scp(scp: int, order: Order) -> None:
    with association(scp) as assoc:
        status, _ = assoc.send_n_create(
            mpps_in_progress(worklist_item(scp, order)), ModalityPerformedProcedureStep, None
        )
    assert status.Status == STATUS_SUCCESS
    assert UID(PerformedProcedureStep.objects.get().sop_instance_uid).is_valid


def test_two_performed_steps_for_one_scheduled_step(scp: int, order: Order) -> None:
    item = worklist_item(scp, order)
    first = started(scp, item)
    second = started(scp, item, start_time="102000")
    assert n_set(scp, first, mpps_completed()).Status == STATUS_SUCCESS
    # The other performed step still runs: so does the scheduled step.
    assert step_of(order).status == ScheduledProcedureStep.Status.IN_PROGRESS
    assert n_set(scp, second, mpps_completed(status="DISCONTINUED", series=0)).Status == 0
    # One of its performed steps completed it.
    assert step_of(order).status == ScheduledProcedureStep.Status.COMPLETED
    order.refresh_from_db()
    assert order.status == Order.Status.COMPLETED


def test_times_in_the_modalitys_own_offset_and_latin_1_names(scp: int, order: Order) -> None:
    attributes = mpps_in_progress(worklist_item(scp, order))
    attributes.SpecificCharacterSet = "ISO_IR 100"
    attributes.TimezoneOffsetFromUTC = "-0500"
    status, uid = n_create(scp, attributes)
    assert status.Status == STATUS_SUCCESS
    performed = PerformedProcedureStep.objects.get(sop_instance_uid=uid)
    assert performed.patient_name == "Müller^Hans"
    assert performed.started_at == dt.datetime(2026, 1, 5, 15, 15, tzinfo=dt.UTC)
