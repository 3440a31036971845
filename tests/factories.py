"""Test data built through the services, the way the front desk and the HIS make it."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

from django.utils import timezone

from ris import services
from ris.models import Order, Patient, ProcedureType, Room, ScheduledProcedureStep

_counter = itertools.count(1)


def procedure(code: str = "CTHEAD", modality: str = "CT", **fields: Any) -> ProcedureType:
    defaults = {
        "name": f"{modality} {code}",
        "modality": modality,
        "body_part": "HEAD",
        "cpt_code": "70450",
        "default_duration_minutes": 20,
        "price": "250.00",
    }
    defaults.update(fields)
    return ProcedureType.objects.get_or_create(code=code, defaults=defaults)[0]


def room(name: str = "CT 1", modality: str = "CT", ae_title: str = "CT1") -> Room:
    return Room.objects.get_or_create(
        name=name,
        defaults={"modality": modality, "station_ae_title": ae_title, "station_name": name[:16]},
    )[0]


def patient(family: str = "Testperson", given: str = "Alex", **fields: Any) -> Patient:
    number = next(_counter)
    data = services.PatientInput(
        family_name=family,
        given_name=given,
        birth_date=fields.pop("birth_date", dt.date(1970, 1, number % 28 + 1)),
        sex=fields.pop("sex", "U"),
        identifiers=fields.pop(
            "identifiers", [services.IdentifierInput(value=f"MRN{number:06d}", issuer="DEMO")]
        ),
        **fields,
    )
    return services.register_patient(data)


def order(
    for_patient: Patient | None = None,
    *,
    start: dt.datetime | None = None,
    procedure_type: ProcedureType | None = None,
    in_room: Room | None = None,
    **fields: Any,
) -> Order:
    booking = services.BookingInput(
        patient=for_patient or patient(),
        procedure_type=procedure_type or procedure(),
        scheduled_start=start or timezone.now().replace(minute=0, second=0, microsecond=0),
        room=in_room,
        **fields,
    )
    return services.book_exam(booking)


def completed_order(for_patient: Patient | None = None, **fields: Any) -> Order:
    """Book an exam, then start and complete it, as the modality reports it by MPPS."""
    booked = order(for_patient, **fields)
    steps = list(ScheduledProcedureStep.objects.filter(requested_procedure__order=booked))
    services.start_exam(steps, started_at=timezone.now())
    services.complete_exam(steps, ended_at=timezone.now())
    booked.refresh_from_db()
    return booked


def received_study(booked: Order, instances: int = 1, **fields: Any) -> Any:
    """Store images for BOOKED's study the way the modality sends them; return the Study."""
    from pacs.models import Study
    from pacs.services import ingest_instance
    from tests import dicom_factory

    requested = booked.requested_procedures.get()
    patient = booked.patient
    identifier = patient.identifiers.filter(is_alias=False).select_related("issuer").first()
    datasets = dicom_factory.series(
        instances,
        **{
            "study_uid": requested.study_instance_uid,
            "accession": booked.accession_number,
            "patient_name": patient.dicom_name,
            "patient_id": identifier.value if identifier else "",
            "issuer": identifier.issuer.namespace_id if identifier else None,
            "modality": requested.procedure_type.modality,
            **fields,
        },
    )
    for ds in datasets:
        if patient.birth_date:
            ds.PatientBirthDate = patient.birth_date.strftime("%Y%m%d")
        ds.PatientSex = patient.sex
        ingest_instance(
            dicom_factory.encoded(ds),
            transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
            calling_ae="CT1",
        )
    return Study.objects.get(study_instance_uid=requested.study_instance_uid)
