"""The RIS services: registration, booking, check-in, cancellation."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from pydicom.uid import UID

from ris import services
from ris.models import Order, Patient, PatientIdentifier, ScheduledProcedureStep
from tests import factories

pytestmark = pytest.mark.django_db


def test_booking_creates_order_procedure_and_step_for_the_worklist() -> None:
    room = factories.room()
    start = timezone.now().replace(microsecond=0)
    order = factories.order(
        start=start, in_room=room, procedure_type=factories.procedure(default_duration_minutes=30)
    )
    assert len(order.accession_number) <= 16
    requested = order.requested_procedures.get()
    assert UID(requested.study_instance_uid).is_valid
    step = requested.steps.get()
    assert step.station_ae_title == "CT1"
    assert step.scheduled_end - step.scheduled_start == dt.timedelta(minutes=30)
    assert step.status == ScheduledProcedureStep.Status.SCHEDULED


def test_accession_numbers_and_uids_never_repeat() -> None:
    orders = [factories.order() for _ in range(5)]
    assert len({order.accession_number for order in orders}) == 5
    uids = {order.requested_procedures.get().study_instance_uid for order in orders}
    assert len(uids) == 5


def test_given_accession_number_is_kept_and_a_duplicate_refused() -> None:
    factories.order(accession_number="EXT123")
    with pytest.raises(ValidationError, match="already used"):
        factories.order(accession_number="EXT123")
    assert Order.objects.filter(accession_number="EXT123").count() == 1


def test_a_generated_number_typed_by_hand_already_is_passed_over() -> None:
    generated = factories.order().accession_number
    prefix, day, number = generated[:-11], generated[-11:-5], int(generated[-5:])
    # The next two numbers of the day were typed by hand for orders from elsewhere.
    for taken in (number + 1, number + 2):
        factories.order(accession_number=f"{prefix}{day}{taken:05d}")
    assert factories.order().accession_number == f"{prefix}{day}{number + 3:05d}"
    assert factories.order().accession_number == f"{prefix}{day}{number + 4:05d}"


def test_a_placer_order_number_names_one_live_order() -> None:
    first = factories.order(placer_order_number="PLC-77")
    with pytest.raises(IntegrityError), transaction.atomic():
        factories.order(placer_order_number="PLC-77")  # a second NW racing past the check
    services.cancel_order(first, "ordered twice by mistake")
    again = factories.order(placer_order_number="PLC-77")  # the number may be used again
    assert Order.objects.filter(placer_order_number="PLC-77").count() == 2
    assert again.status == Order.Status.SCHEDULED
    factories.order()
    factories.order()  # orders without a placer number are many


def test_room_of_another_modality_is_refused_and_nothing_is_written() -> None:
    patient = factories.patient()
    mr_room = factories.room("MR 1", "MR", "MR1")
    before = Order.objects.count()
    with pytest.raises(ValidationError, match="is a MR room"):
        factories.order(for_patient=patient, in_room=mr_room)
    assert Order.objects.count() == before


def test_naive_start_time_is_refused() -> None:
    with pytest.raises(ValidationError, match="time zone"):
        factories.order(start=dt.datetime(2026, 1, 1, 9, 0))  # noqa: DTZ001


def test_one_identifier_belongs_to_one_patient() -> None:
    factories.patient(identifiers=[services.IdentifierInput("DUP1", "HOSP_A")])
    with pytest.raises(ValidationError, match="already belongs"):
        factories.patient(family="Second", identifiers=[services.IdentifierInput("DUP1", "HOSP_A")])
    assert Patient.objects.filter(family_name="Second").count() == 0
    # The same value under another issuer is another identifier.
    factories.patient(family="Third", identifiers=[services.IdentifierInput("DUP1", "HOSP_B")])
    assert PatientIdentifier.objects.filter(value="DUP1").count() == 2


def test_one_patient_known_to_several_issuers() -> None:
    patient = factories.patient(
        identifiers=[
            services.IdentifierInput("111", "HOSP_A"),
            services.IdentifierInput("222", "HOSP_B"),
            services.IdentifierInput("7501010001", "NATIONAL", PatientIdentifier.Type.NATIONAL),
        ]
    )
    assert sorted(patient.identifiers.values_list("issuer__namespace_id", flat=True)) == [
        "HOSP_A",
        "HOSP_B",
        "NATIONAL",
    ]


def test_cancel_takes_steps_off_and_needs_a_reason() -> None:
    order = factories.order()
    with pytest.raises(ValidationError, match="needs a reason"):
        services.cancel_order(order, "  ")
    services.cancel_order(order, "duplicate order")
    order.refresh_from_db()
    assert order.status == Order.Status.CANCELLED
    assert (
        order.requested_procedures.get().steps.get().status
        == ScheduledProcedureStep.Status.CANCELLED
    )
    with pytest.raises(ValidationError, match="cannot be cancelled"):
        services.cancel_order(order, "again")


def test_dicom_name_of_a_patient() -> None:
    patient = factories.patient(family="Testperson", given="Alex")
    assert patient.dicom_name == "Testperson^Alex"
    assert str(patient) == "TESTPERSON, Alex"


def test_a_portal_account_is_linked_to_one_patient_only(personas) -> None:
    first, second = factories.patient(), factories.patient()
    services.grant_patient_access(first, personas.patient)
    with pytest.raises(ValidationError, match="already linked"):
        services.grant_patient_access(second, personas.patient)
    services.grant_patient_access(
        first, personas.other_physician
    )  # the record moves to another account
    assert not personas.patient.has_perm("ris.view_patient", first)


def test_update_patient_changes_only_what_differs_and_audits_it(personas) -> None:
    from core.models import AuditEvent
    from ris import signals

    patient = factories.patient(family="Before")
    heard: list[list[str]] = []

    def receiver(sender, **kwargs):  # type: ignore[no-untyped-def]
        heard.append(kwargs["changed"])

    signals.patient_updated.connect(receiver)
    try:
        changed = services.update_patient(
            patient, {"family_name": "After", "sex": patient.sex}, actor=personas.front_desk
        )
    finally:
        signals.patient_updated.disconnect(receiver)
    assert changed == ["family_name"]
    assert heard == [["family_name"]]
    patient.refresh_from_db()
    assert patient.family_name == "After"
    event = AuditEvent.objects.filter(action="update", object_type="ris.patient").get()
    assert event.detail == "changed: family_name" and event.actor_name == "frontdesk"
    assert services.update_patient(patient, {"family_name": "After"}) == []
    with pytest.raises(ValidationError):
        services.update_patient(patient, {"merged_into": None})
    with pytest.raises(ValidationError):
        services.update_patient(patient, {"sex": "X"})


def test_merge_moves_orders_identifiers_and_grants(personas) -> None:
    survivor = factories.patient(
        family="Survivor", identifiers=[services.IdentifierInput("S1", "HOSP_A")]
    )
    merged = factories.patient(
        family="Merged", identifiers=[services.IdentifierInput("M1", "HOSP_B")]
    )
    order = factories.order(for_patient=merged, referring_physician=personas.referring_physician)
    services.merge_patients(survivor, merged, actor=personas.front_desk)
    order.refresh_from_db()
    merged.refresh_from_db()
    assert order.patient == survivor
    assert merged.merged_into == survivor
    alias = PatientIdentifier.objects.get(value="M1")
    assert alias.patient == survivor and alias.is_alias
    assert services.find_patient_by_identifier("M1", "HOSP_B") == survivor
    assert personas.referring_physician.has_perm("ris.view_patient", survivor)
    with pytest.raises(ValidationError, match="already merged"):
        services.merge_patients(survivor, merged)
    with pytest.raises(ValidationError, match="into itself"):
        services.merge_patients(survivor, survivor)
    # A merged record is no longer listed, and cannot be edited.
    from ris.selectors import patients_visible_to

    assert list(patients_visible_to(personas.front_desk, "")) == [survivor]
    with pytest.raises(ValidationError, match="was merged"):
        services.update_patient(merged, {"family_name": "Late"})


def test_merge_moves_the_studies_of_the_merged_patient() -> None:
    from pacs.models import Study

    survivor, merged = factories.patient(), factories.patient()
    study = Study.objects.create(study_instance_uid="1.2.3.4", patient=merged)
    services.merge_patients(survivor, merged)
    study.refresh_from_db()
    assert study.patient == survivor
