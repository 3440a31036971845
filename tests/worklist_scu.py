"""The worklist's DICOM services in-process, and a modality's side of MWL and MPPS, for tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import connections
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # made at import
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    Verification,
)

from core import audit
from core.dicom_server import ArchiveAE, build_ae, start

SCP_AE = "RISMWL"
MODALITY_AE = "CT1"
WORKLIST_SERVICES = [
    "pacs.dimse.verification_service",
    "worklist.dimse.worklist_service",
    "worklist.dimse.mpps_service",
]


@contextmanager
def running_scp(ae_title: str = SCP_AE) -> Iterator[tuple[ArchiveAE, int]]:
    """Start the AE with the configured services on a free port; yield it and the port."""
    ae = build_ae(ae_title)
    server = start(ae, "127.0.0.1", 0, block=False)
    try:
        yield ae, int(server.server_address[1])
    finally:
        ae.shutdown()
        # The rows of associations that ended last go in before the test's database goes.
        audit.flush(timeout=30)
        connections.close_all()


@contextmanager
def association(port: int, ae_title: str = MODALITY_AE) -> Iterator[Any]:
    """An association offering MWL FIND, MPPS and Verification, as a modality opens."""
    client = AE(ae_title=ae_title)
    client.acse_timeout = client.dimse_timeout = client.network_timeout = 30
    contexts = [
        build_context(ModalityWorklistInformationFind),
        build_context(ModalityPerformedProcedureStep),
        build_context(Verification),
    ]
    assoc = client.associate("127.0.0.1", port, ae_title=SCP_AE, contexts=contexts)
    assert assoc.is_established, "association rejected"
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def find(port: int, query: Dataset, ae_title: str = MODALITY_AE) -> tuple[list[Dataset], Dataset]:
    """Send one MWL C-FIND; return the matches and the final status dataset."""
    with association(port, ae_title) as assoc:
        matches, final = [], None
        for status, identifier in assoc.send_c_find(query, ModalityWorklistInformationFind):
            if status.Status in (0xFF00, 0xFF01):
                matches.append(identifier)
            else:
                final = status
    assert final is not None, "no final C-FIND response"
    return matches, final


def mpps_in_progress(
    worklist_item: Dataset | None,
    *,
    station: str = MODALITY_AE,
    start_date: str = "20260105",
    start_time: str = "101500",
) -> Dataset:
    """An N-CREATE attribute list as a modality makes it from a worklist item (PS3.4 F.7.2.1).

    With no item, the unscheduled case: no SPS, a Study Instance UID of the modality's own.
    """
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ssa = Dataset()
    if worklist_item is not None:
        sps = worklist_item.ScheduledProcedureStepSequence[0]
        ssa.StudyInstanceUID = worklist_item.StudyInstanceUID
        ssa.AccessionNumber = worklist_item.AccessionNumber
        ssa.RequestedProcedureID = worklist_item.RequestedProcedureID
        ssa.RequestedProcedureDescription = worklist_item.RequestedProcedureDescription
        ssa.ScheduledProcedureStepID = sps.ScheduledProcedureStepID
        ssa.ScheduledProcedureStepDescription = sps.ScheduledProcedureStepDescription
        ds.PatientName = worklist_item.PatientName
        ds.PatientID = worklist_item.PatientID
        ds.PatientBirthDate = worklist_item.PatientBirthDate
        ds.PatientSex = worklist_item.PatientSex
    else:
        ssa.StudyInstanceUID = generate_uid()
        ssa.AccessionNumber = ""
        ssa.RequestedProcedureID = ""
        ssa.ScheduledProcedureStepID = ""
        ds.PatientName = "Walkin^Wanda"
        ds.PatientID = "WALKIN1"
        ds.PatientBirthDate = ""
        ds.PatientSex = "F"
    ssa.ReferencedStudySequence = []
    ssa.ScheduledProtocolCodeSequence = []
    ds.ScheduledStepAttributesSequence = [ssa]
    ds.ReferencedPatientSequence = []
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = station
    ds.PerformedStationName = "CT ROOM 1"
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = start_date
    ds.PerformedProcedureStepStartTime = start_time
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepDescription = "CT head"
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = []
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    ds.StudyID = "1"
    ds.PerformedProtocolCodeSequence = []
    ds.PerformedSeriesSequence = []
    return ds


def mpps_completed(
    *,
    status: str = "COMPLETED",
    end_date: str = "20260105",
    end_time: str = "103000",
    series: int = 1,
    reason: tuple[str, str, str] | None = None,
) -> Dataset:
    """An N-SET modification list that ends the step (PS3.4 F.7.2.2)."""
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = end_date
    ds.PerformedProcedureStepEndTime = end_time
    performed = []
    for number in range(series):
        item = Dataset()
        item.SeriesInstanceUID = generate_uid()
        item.SeriesDescription = f"Series {number + 1}"
        item.ProtocolName = "HEAD"
        item.RetrieveAETitle = "RISPACS"
        item.PerformingPhysicianName = ""
        item.OperatorsName = "Tech^Terry"
        image = Dataset()
        image.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        image.ReferencedSOPInstanceUID = generate_uid()
        item.ReferencedImageSequence = [image]
        item.ReferencedNonImageCompositeSOPInstanceSequence = []
        performed.append(item)
    ds.PerformedSeriesSequence = performed
    if reason is not None:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = reason
        ds.PerformedProcedureStepDiscontinuationReasonCodeSequence = [code]
    return ds


def n_create(port: int, attributes: Dataset, uid: str | None = None) -> tuple[Dataset, str]:
    """Send N-CREATE; return the status and the instance's UID."""
    uid = uid or generate_uid()
    with association(port) as assoc:
        status, _ = assoc.send_n_create(attributes, ModalityPerformedProcedureStep, uid)
    return status, uid


def n_set(port: int, uid: str, modifications: Dataset) -> Dataset:
    with association(port) as assoc:
        status, _ = assoc.send_n_set(modifications, ModalityPerformedProcedureStep, uid)
    return status
