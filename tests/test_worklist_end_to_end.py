"""The front desk books, the modality pulls its worklist and reports MPPS, the RIS follows.

The AE here carries every configured service, the archive's included, so the worklist's
C-FIND and the archive's Query/Retrieve C-FIND are both answered by the one listener.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.utils import timezone
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)

from ris import services
from ris.models import Order
from tests import factories
from tests.mwl_query import worklist_query
from tests.worklist_scu import (
    MODALITY_AE,
    SCP_AE,
    find,
    mpps_completed,
    mpps_in_progress,
    n_create,
    n_set,
    running_scp,
)
from worklist.dimse import STATUS_SUCCESS
from worklist.models import PerformedProcedureStep

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def scp(settings: Any) -> Iterator[int]:
    settings.DICOM_ACCEPT_UNKNOWN_AE = True
    assert "worklist.dimse.worklist_service" in settings.DICOM_SERVICES
    assert "worklist.dimse.mpps_service" in settings.DICOM_SERVICES
    with running_scp() as (_, port):
        yield port


def test_booked_exam_is_pulled_performed_and_completed(scp: int) -> None:
    room = factories.room("CT 1", "CT", MODALITY_AE)
    noon = timezone.localtime().replace(hour=12, minute=0, second=0, microsecond=0)
    patient = factories.patient("Müller", "Hans")
    order = services.book_exam(
        services.BookingInput(
            patient=patient,
            procedure_type=factories.procedure(),
            scheduled_start=noon,
            room=room,
            referring_physician_name="Referrer^Rob",
        )
    )
    cancelled = services.book_exam(
        services.BookingInput(
            patient=factories.patient("Doe", "Jane"),
            procedure_type=factories.procedure(),
            scheduled_start=noon,
            room=room,
        )
    )
    services.cancel_order(cancelled, "booked in error")

    today = worklist_query(
        ScheduledStationAETitle=MODALITY_AE,
        ScheduledProcedureStepStartDate=timezone.localdate().strftime("%Y%m%d"),
    )
    matches, final = find(scp, today)
    assert final.Status == STATUS_SUCCESS
    (item,) = matches  # the cancelled order is not there
    requested = order.requested_procedures.get()
    assert item.AccessionNumber == order.accession_number
    assert item.StudyInstanceUID == requested.study_instance_uid
    assert str(item.PatientName) == "Müller^Hans"

    status, uid = n_create(scp, mpps_in_progress(item, start_date=noon.strftime("%Y%m%d")))
    assert status.Status == STATUS_SUCCESS
    order.refresh_from_db()
    assert order.status == Order.Status.IN_PROGRESS
    # In progress, the step has left the worklist.
    assert find(scp, today)[0] == []

    done = mpps_completed(end_date=noon.strftime("%Y%m%d"), end_time="123000")
    assert n_set(scp, uid, done).Status == STATUS_SUCCESS
    order.refresh_from_db()
    assert order.status == Order.Status.COMPLETED
    performed = PerformedProcedureStep.objects.get(sop_instance_uid=uid)
    assert performed.study_instance_uid == requested.study_instance_uid
    assert not performed.needs_reconciliation
    cancelled.refresh_from_db()
    assert cancelled.status == Order.Status.CANCELLED


def test_the_archives_query_shares_the_listener(scp: int) -> None:
    client = AE(ae_title=MODALITY_AE)
    assoc = client.associate(
        "127.0.0.1",
        scp,
        ae_title=SCP_AE,
        contexts=[build_context(StudyRootQueryRetrieveInformationModelFind)],
    )
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    try:
        statuses = [
            status.Status
            for status, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
        ]
    finally:
        assoc.release()
    assert statuses == [STATUS_SUCCESS]
