"""A modality's Modality Worklist query, with no Django: shared by the tests and bench/mwl.py."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset

__all__ = ["worklist_query"]


def worklist_query(**keys: Any) -> Dataset:
    """A typical modality query: the SPS keys given, and the usual return keys."""
    sps_keys = {
        key: keys.pop(key)
        for key in list(keys)
        if key
        in (
            "ScheduledStationAETitle",
            "Modality",
            "ScheduledProcedureStepStartDate",
            "ScheduledProcedureStepStartTime",
            "ScheduledPerformingPhysicianName",
            "ScheduledProcedureStepID",
            "ScheduledStationName",
            "ScheduledProcedureStepStatus",
        )
    }
    ds = Dataset()
    for keyword in (
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "ReferringPhysicianName",
        "RequestedProcedureID",
        "RequestedProcedureDescription",
        "StudyInstanceUID",
        "AdmissionID",
        "RequestedProcedurePriority",
    ):
        setattr(ds, keyword, "")
    ds.RequestedProcedureCodeSequence = []
    item = Dataset()
    for keyword in (
        "ScheduledStationAETitle",
        "ScheduledProcedureStepStartDate",
        "ScheduledProcedureStepStartTime",
        "Modality",
        "ScheduledPerformingPhysicianName",
        "ScheduledProcedureStepDescription",
        "ScheduledStationName",
        "ScheduledProcedureStepLocation",
        "ScheduledProcedureStepID",
        "ScheduledProcedureStepStatus",
    ):
        setattr(item, keyword, sps_keys.get(keyword, ""))
    ds.ScheduledProcedureStepSequence = [item]
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds
