"""Undoing "mark as unscheduled": the order booked after the fact is cancelled, the study
and its stored headers go back to how they were received, unless that would lose work."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pydicom
import pytest
from django.test import Client
from django.urls import reverse

from core.models import AuditEvent
from pacs import reconciliation
from pacs.models import HeaderRewrite, Instance, ReconciliationItem, Study
from pacs.storage import default_storage
from reporting import services as reporting
from ris import services as ris_services
from ris.billing import services as billing
from ris.billing.models import Charge
from ris.hl7 import er7
from ris.hl7.models import Destination, OutboundMessage
from ris.models import Order, Patient, RequestedProcedure, ScheduledProcedureStep
from tests import dicom_factory, factories
from tests.archive import find, query, running_archive, store, study_with_a_wrong_patient_id
from tests.dicomweb_util import basic
from tests.hl7util import MLLPReceiver
from tests.personas import PASSWORD, Personas

pytestmark = [
    pytest.mark.django_db(transaction=True),
    # The header rewrite is a Celery task; in CI a broker is configured but no worker runs.
    pytest.mark.usefixtures("eager"),
]

Login = Callable[[Any], Client]
HL7_ORDER_CANCELLED = "CA"  # HL7 table 0038, ORC-5


@dataclass
class Unscheduled:
    port: int
    his: MLLPReceiver
    patient: Patient
    item: ReconciliationItem
    study: Study
    received: list[pydicom.Dataset]  # the stored files as received, read back
    cfind: list[tuple[str, str, str]]  # C-FIND's answer before the action
    qido: list[dict[str, Any]]  # QIDO-RS's answer before the action
    order: Order


def _files(study: Study) -> list[str]:
    return list(
        Instance.objects.filter(series__study=study)
        .order_by("sop_instance_uid")
        .values_list("file_path", flat=True)
    )


def _read(study: Study) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(default_storage().path(path)) for path in _files(study)]


def _digest(study: Study) -> list[str]:
    return [
        hashlib.sha256(default_storage().path(path).read_bytes()).hexdigest()
        for path in _files(study)
    ]


def _cfind(port: int, study: Study) -> list[tuple[str, str, str]]:
    matches, final = find(
        port,
        query(
            "STUDY",
            StudyInstanceUID=study.study_instance_uid,
            PatientID="",
            PatientName="",
            AccessionNumber="",
        ),
    )
    assert final.Status == 0x0000
    return [(str(m.PatientID), str(m.PatientName), str(m.AccessionNumber)) for m in matches]


def _qido(study: Study, personas: Personas) -> list[dict[str, Any]]:
    url = (
        f"/dicomweb/studies?StudyInstanceUID={study.study_instance_uid}"
        "&includefield=00100010&includefield=00100020&includefield=00080050"
    )
    response = Client().get(
        url, HTTP_AUTHORIZATION=basic(personas.radiologist)["HTTP_AUTHORIZATION"]
    )
    assert response.status_code == 200
    results: list[dict[str, Any]] = json.loads(response.content)
    for result in results:
        result.pop("00081190", None)  # the retrieve URL: the same either way, host aside
    return results


@pytest.fixture
def unscheduled(personas: Personas, settings: Any) -> Iterator[Unscheduled]:
    """Images with no order, marked as unscheduled by the front desk: an order booked."""
    settings.RECONCILIATION_REWRITE_DELAY = 0
    his = MLLPReceiver()  # the placer, told of order status changes
    his.up()
    Destination.objects.create(name="his", host="127.0.0.1", port=his.port, message_types="ORM")
    patient = factories.patient(
        "Testperson",
        "Alex",
        birth_date=dt.date(1970, 1, 1),
        sex="F",
        identifiers=[ris_services.IdentifierInput("MRN4242", "DEMO")],
    )
    with running_archive() as port:
        # No accession, the name in the modality's form: the action rewrites both.
        datasets = dicom_factory.series(
            2, patient_id="MRN4242", issuer="DEMO", patient_name="TESTPERSON^ALEX", accession=""
        )
        store(port, datasets)
        study = Study.objects.get(study_instance_uid=datasets[0].StudyInstanceUID)
        item = ReconciliationItem.objects.get(study=study)
        assert item.reason == ReconciliationItem.Reason.NO_ORDER
        received, cfind, qido = _read(study), _cfind(port, study), _qido(study, personas)
        order = reconciliation.mark_unscheduled(
            item, factories.procedure(), patient=patient, actor=personas.front_desk
        )
        # The action did rewrite the headers: there is something to undo.
        assert {ds.AccessionNumber for ds in _read(study)} == {order.accession_number}
        assert _cfind(port, study) != cfind
        yield Unscheduled(port, his, patient, item, study, received, cfind, qido, order)
    his.close()


def _undo(login: Login, who: Any, item: ReconciliationItem) -> Any:
    return login(who).post(reverse("pacs:reconciliation-action", args=[item.pk, "undo"]))


def test_undo_cancels_the_order_and_puts_the_study_back_as_received(
    unscheduled: Unscheduled, personas: Personas, login: Login
) -> None:
    u = unscheduled
    page = login(personas.front_desk).get(reverse("pacs:reconciliation-detail", args=[u.item.pk]))
    assert b'id="undo-item"' in page.content
    assert u.order.accession_number.encode() in page.content  # names the order it cancels
    charge = Charge.objects.get(order=u.order)  # captured when the exam was completed
    assert charge.status == Charge.Status.PENDING

    response = _undo(login, personas.front_desk, u.item)

    assert response.status_code == 302
    u.item.refresh_from_db()
    assert u.item.status == ReconciliationItem.Status.OPEN
    assert (u.item.resolution, u.item.before) == ("", {})
    # The stored headers: what was received, with the action and its undoing on record.
    assert not HeaderRewrite.objects.exists()
    after = _read(u.study)
    assert len(after) == len(u.received) == 2
    for received, ds in zip(u.received, after, strict=True):
        history = ds.OriginalAttributesSequence
        assert len(history) == 2  # the correction, then its undoing
        assert history[1].ModifiedAttributesSequence[0].AccessionNumber == u.order.accession_number
        del ds.OriginalAttributesSequence
        assert ds == received
    # The index, C-FIND and QIDO answer the values from before the action.
    study = Study.objects.get(pk=u.study.pk)
    assert study.requested_procedure is None
    assert (study.accession_number, study.patient_name) == ("", "TESTPERSON^ALEX")
    assert _cfind(u.port, study) == u.cfind
    assert _qido(study, personas) == u.qido
    # The order booked after the fact is cancelled, off every list, and its charge void.
    order = Order.objects.get(pk=u.order.pk)
    assert order.status == Order.Status.CANCELLED
    assert order.cancelled_by == personas.front_desk
    assert "undone" in order.cancel_reason
    requested = order.requested_procedures.get()
    assert requested.status == RequestedProcedure.Status.CANCELLED
    assert requested.study_instance_uid != study.study_instance_uid  # the study's UID is free
    assert set(requested.steps.values_list("status", flat=True)) == {
        ScheduledProcedureStep.Status.CANCELLED
    }
    charge.refresh_from_db()
    assert charge.status == Charge.Status.VOID
    assert charge.voided_by == personas.front_desk
    # The placer is told (delivered: Celery runs in-process here): ORM^O01, ORC-5 CA.
    statuses = []
    for message in u.his.received:
        orc = er7.parse(message.text).first("ORC")
        assert orc is not None
        statuses.append((message.message_type, orc.value(3), orc.value(5)))
    assert statuses == [  # in progress and completed when booked after the fact, then CA
        ("ORM^O01", order.accession_number, "IP"),
        ("ORM^O01", order.accession_number, "CM"),
        ("ORM^O01", order.accession_number, HL7_ORDER_CANCELLED),
    ]
    # Audited, by the person who undid it.
    assert AuditEvent.objects.filter(
        actor=personas.front_desk,
        object_type="pacs.study",
        detail__startswith="reconciliation undone",
        detail__contains=f"order {order.accession_number} cancelled",
    ).exists()
    assert AuditEvent.objects.filter(
        actor=personas.front_desk, object_type="ris.order", detail__startswith="cancelled:"
    ).exists()

    # The item can be resolved again: another order after the fact takes the study.
    again = reconciliation.mark_unscheduled(
        u.item, factories.procedure(), patient=u.patient, actor=personas.front_desk
    )
    assert again.pk != order.pk
    assert Study.objects.get(pk=study.pk).requested_procedure == again.requested_procedures.get()


def _state(u: Unscheduled) -> tuple[Any, ...]:
    """Everything a refused undo must leave as it was."""
    study = Study.objects.get(pk=u.study.pk)
    order = Order.objects.get(pk=u.order.pk)
    item = ReconciliationItem.objects.get(pk=u.item.pk)
    return (
        item.status,
        item.resolution,
        item.before,
        reconciliation.identity_of_study(study),
        study.requested_procedure_id,
        order.status,
        list(order.requested_procedures.values_list("status", "study_instance_uid")),
        list(
            ScheduledProcedureStep.objects.filter(requested_procedure__order=order).values_list(
                "status", flat=True
            )
        ),
        list(Charge.objects.filter(order=order).values_list("status", flat=True)),
        OutboundMessage.objects.count(),
        HeaderRewrite.objects.count(),
        _digest(study),
        _cfind(u.port, study),
    )


def _claim_and_report(u: Unscheduled, personas: Personas, *, sign: bool) -> None:
    study = Study.objects.get(pk=u.study.pk)
    reporting.claim_study(study, personas.radiologist)
    report = reporting.start_report(study, personas.radiologist)
    text = reporting.ReportText(findings="Normal brain.", impression="No acute finding.")
    report = reporting.save_draft(report, personas.radiologist, text)
    if sign:
        reporting.sign_report(report, personas.radiologist, PASSWORD, final=True)
    else:
        reporting.release_claim(study, personas.radiologist)  # a draft, nobody reading now


def _post_charge(u: Unscheduled, personas: Personas) -> None:
    charge = Charge.objects.get(order=u.order)
    billing.post_charges([charge.pk], actor=personas.admin)


@pytest.mark.parametrize(
    ("case", "arrange", "message"),
    [
        ("draft report", lambda u, p: _claim_and_report(u, p, sign=False), "draft report"),
        ("final report", lambda u, p: _claim_and_report(u, p, sign=True), "final report"),
        (
            "being read",
            lambda u, p: reporting.claim_study(Study.objects.get(pk=u.study.pk), p.radiologist),
            "is reading this study",
        ),
        ("billed", _post_charge, "was billed"),
    ],
)
def test_undo_is_refused_when_it_would_lose_work(
    unscheduled: Unscheduled,
    personas: Personas,
    login: Login,
    case: str,
    arrange: Callable[[Unscheduled, Personas], None],
    message: str,
) -> None:
    arrange(unscheduled, personas)
    before = _state(unscheduled)
    undone = AuditEvent.objects.filter(detail__startswith="reconciliation undone").count()

    response = _undo(login, personas.front_desk, unscheduled.item)

    assert response.status_code == 400, case
    assert message in response.content.decode()
    assert _state(unscheduled) == before
    assert AuditEvent.objects.filter(detail__startswith="reconciliation undone").count() == undone
    with pytest.raises(ValueError, match=message):
        reconciliation.undo(unscheduled.item, actor=personas.admin)
    assert _state(unscheduled) == before


def test_a_voided_charge_no_longer_stands_in_the_way(
    unscheduled: Unscheduled, personas: Personas
) -> None:
    _post_charge(unscheduled, personas)
    with pytest.raises(ValueError, match="was billed"):
        reconciliation.undo(unscheduled.item, actor=personas.front_desk)
    billing.void_charge(Charge.objects.get(order=unscheduled.order), "booked in error")

    reconciliation.undo(unscheduled.item, actor=personas.front_desk)

    assert Order.objects.get(pk=unscheduled.order.pk).status == Order.Status.CANCELLED
    assert _cfind(unscheduled.port, unscheduled.study) == unscheduled.cfind


def test_undo_after_the_order_was_called_off_already(
    unscheduled: Unscheduled, personas: Personas
) -> None:
    """The order booked after the fact is called off already (by a person, as booked in
    error): undo still puts the study back and reopens the item, and cancels nothing twice."""
    ris_services.cancel_order(unscheduled.order, "booked in error", booked_in_error=True)
    reconciliation.undo(unscheduled.item, actor=personas.front_desk)
    assert ReconciliationItem.objects.get(pk=unscheduled.item.pk).status == (
        ReconciliationItem.Status.OPEN
    )
    assert Order.objects.get(pk=unscheduled.order.pk).status == Order.Status.CANCELLED
    assert _cfind(unscheduled.port, unscheduled.study) == unscheduled.cfind


def test_undo_of_a_link_is_refused_while_the_study_has_a_report(
    personas: Personas, settings: Any
) -> None:
    """The same rule for "link to this order": a report is not left on another's images."""
    settings.RECONCILIATION_REWRITE_DELAY = 0
    with study_with_a_wrong_patient_id(1) as (item, requested):
        pass
    reconciliation.link_to_order(item, requested, actor=personas.front_desk)
    study = Study.objects.get(pk=item.study_id)
    reporting.claim_study(study, personas.radiologist)
    reporting.start_report(study, personas.radiologist)

    with pytest.raises(ValueError, match="report"):
        reconciliation.undo(item, actor=personas.front_desk)

    item.refresh_from_db()
    assert item.status == ReconciliationItem.Status.RESOLVED
    assert Study.objects.get(pk=study.pk).requested_procedure == requested
