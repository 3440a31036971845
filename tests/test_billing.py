"""Billing: charges captured at completion, review flags, posting by DFT^P03, void, totals."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from core.models import AuditEvent
from ris import services as ris_services
from ris.billing import selectors, services
from ris.billing.models import Charge, Coverage
from ris.billing.receivers import capture_or_flag
from ris.hl7 import er7
from ris.hl7.models import Destination, OutboundMessage
from ris.models import Order
from ris.signals import order_status_changed
from tests import factories
from tests.hl7util import MLLPReceiver

pytestmark = pytest.mark.django_db


@pytest.fixture
def his() -> Iterator[MLLPReceiver]:
    receiver = MLLPReceiver()
    receiver.up()
    yield receiver
    receiver.close()


def dft_destination(port: int, types: str = "DFT") -> Destination:
    return Destination.objects.create(
        name=f"billing-{port}", host="127.0.0.1", port=port, message_types=types
    )


def charge_of(order: Order) -> Charge:
    return Charge.objects.get(order=order)


def completed_without_charge() -> Order:
    """A completed exam from before billing listened (the receiver disconnected meanwhile)."""
    order_status_changed.disconnect(dispatch_uid="billing-capture-or-flag", sender=Order)
    try:
        return factories.completed_order()
    finally:
        order_status_changed.connect(
            capture_or_flag, sender=Order, dispatch_uid="billing-capture-or-flag"
        )


# ---------------------------------------------------------------- capture


def test_completing_an_exam_captures_its_charge() -> None:
    booked = factories.order(referring_physician_name="REFERRER^RITA")
    assert not Charge.objects.exists()  # booked, not performed: nothing to bill
    steps = list(booked.requested_procedures.get().steps.all())
    ris_services.start_exam(steps, started_at=timezone.now())
    assert not Charge.objects.exists()
    ris_services.complete_exam(steps, ended_at=timezone.now())
    charge = charge_of(booked)
    assert charge.requested_procedure == booked.requested_procedures.get()
    assert charge.patient == booked.patient
    assert (charge.procedure_code, charge.quantity, charge.modifiers) == ("70450", 1, "")
    assert (charge.unit_price, charge.amount, charge.currency) == (
        Decimal("250.00"),
        Decimal("250.00"),
        "USD",
    )
    assert (charge.status, charge.modality) == ("pending", "CT")
    assert charge.referring_physician_name == "REFERRER^RITA"
    assert charge.performed_at <= timezone.now()
    assert AuditEvent.objects.filter(
        action="create", object_type="billing.charge", object_id=str(charge.pk)
    ).exists()


def test_completion_repeated_or_signalled_again_never_charges_twice() -> None:
    order = factories.completed_order()
    steps = list(order.requested_procedures.get().steps.all())
    # The modality sends MPPS COMPLETED again: accepted, and still one charge.
    ris_services.complete_exam(steps, ended_at=timezone.now())
    order_status_changed.send(
        Order, order=order, old_status="in_progress", new_status="completed", actor=None
    )
    assert services.capture_charges(order) == []
    assert services.capture_missing_charges() == []
    assert Charge.objects.filter(order=order).count() == 1
    # And the database refuses a second live charge however it is made.
    first = charge_of(order)
    with pytest.raises(IntegrityError), transaction.atomic():
        Charge.objects.create(
            order=order,
            requested_procedure=first.requested_procedure,
            patient=order.patient,
            procedure_type=first.procedure_type,
            description="again",
            unit_price=1,
            amount=1,
            currency="USD",
            performed_at=timezone.now(),
            modality="CT",
        )


def test_the_charge_rolls_back_with_the_completion() -> None:
    order = factories.order()
    steps = list(order.requested_procedures.get().steps.all())
    ris_services.start_exam(steps, started_at=timezone.now())
    with pytest.raises(RuntimeError), transaction.atomic():
        ris_services.complete_exam(steps, ended_at=timezone.now())
        assert Charge.objects.count() == 1
        raise RuntimeError("the completion fails after the charge was made")
    assert Charge.objects.count() == 0


def test_a_procedure_without_cpt_code_is_charged_and_flagged() -> None:
    procedure = factories.procedure("USNECK", "US", cpt_code="", price="80.00")
    order = factories.completed_order(procedure_type=procedure)
    charge = charge_of(order)
    assert (charge.procedure_code, charge.amount) == ("", Decimal("80.00"))
    flagged = selectors.charges(selectors.ChargeFilter(flag=selectors.FLAG_NO_CPT))
    assert list(flagged) == [charge]
    assert selectors.review_counts(selectors.ChargeFilter())[selectors.FLAG_NO_CPT] == 1


def test_a_discontinued_exam_is_charged_with_modifier_53() -> None:
    order = factories.order()
    steps = list(order.requested_procedures.get().steps.all())
    ris_services.start_exam(steps, started_at=timezone.now())
    ris_services.discontinue_exam(steps, reason="patient unwell", ended_at=timezone.now())
    assert charge_of(order).modifiers == "53"


def test_exams_without_a_charge_are_flagged_and_captured_by_the_command() -> None:
    order = completed_without_charge()
    factories.completed_order()  # charged as it should be
    assert [rp.order for rp in selectors.exams_without_charge()] == [order]
    out = io.StringIO()
    call_command("capture_charges", "--dry-run", stdout=out)
    assert order.accession_number in out.getvalue() and not Charge.objects.filter(order=order)
    call_command("capture_charges", stdout=out)
    assert "1 charge(s) captured" in out.getvalue()
    assert charge_of(order).status == "pending"
    assert not selectors.exams_without_charge().exists()


def test_an_exam_already_read_is_still_captured_when_its_charge_is_missing() -> None:
    order = completed_without_charge()
    requested = order.requested_procedures.get()
    assert ris_services.mark_reported(requested.study_instance_uid, final=True) is not None
    assert [rp.order for rp in selectors.exams_without_charge()] == [order]
    call_command("capture_charges", stdout=io.StringIO())
    assert charge_of(order).status == "pending"


def test_administrator_captures_missing_charges_from_the_page(personas: Any, login: Any) -> None:
    order = completed_without_charge()
    page = login(personas.admin).get(reverse("billing:charge-list")).content.decode()
    assert "Completed exams without a charge: 1" in page and order.accession_number in page
    response = login(personas.admin).post(reverse("billing:capture-missing"))
    assert response.status_code == 302
    assert charge_of(order).status == "pending"
    login(personas.front_desk)
    assert login(personas.front_desk).post(reverse("billing:capture-missing")).status_code == 403


def test_an_order_cancelled_after_its_charge_is_flagged() -> None:
    order = factories.completed_order()
    other = factories.completed_order()
    # cancel_order refuses a performed exam today; the receiver flags whatever path cancels
    # an order that carries a live charge (HL7 CA, a future undo), so it hears the signal.
    order_status_changed.send(
        Order, order=order, old_status="completed", new_status="cancelled", actor=None
    )
    assert charge_of(order).order_cancelled_at is not None
    assert charge_of(other).order_cancelled_at is None
    flagged = selectors.charges(selectors.ChargeFilter(flag=selectors.FLAG_CANCELLED))
    assert list(flagged) == [charge_of(order)]
    # A cancelled exam that was never charged has nothing to flag.
    booked = factories.order()
    ris_services.cancel_order(booked, "patient called off")
    assert not Charge.objects.filter(order=booked).exists()


def test_a_patient_without_coverage_on_the_exam_day_is_flagged() -> None:
    order = factories.completed_order()
    criteria = selectors.ChargeFilter()
    assert selectors.review_counts(criteria)[selectors.FLAG_NO_COVERAGE] == 1
    today = timezone.localdate()
    expired = services.save_coverage(
        order.patient,
        {
            "payer_name": "Old Mutual",
            "policy_number": "OM-1",
            "valid_from": today - dt.timedelta(days=400),
            "valid_to": today - dt.timedelta(days=1),
        },
    )
    assert selectors.review_counts(criteria)[selectors.FLAG_NO_COVERAGE] == 1
    services.save_coverage(
        order.patient, {"payer_name": "Acme Health", "policy_number": "AH-7", "valid_from": today}
    )
    assert selectors.review_counts(criteria)[selectors.FLAG_NO_COVERAGE] == 0
    assert [c.covered for c in selectors.charges(criteria)] == [True]  # type: ignore[attr-defined]
    # A second primary coverage overlapping the first is refused; a secondary one is fine.
    with pytest.raises(ValidationError):
        services.save_coverage(order.patient, {"payer_name": "Dup", "policy_number": "D-1"})
    services.save_coverage(
        order.patient, {"payer_name": "Top-up", "policy_number": "T-1", "priority": 2}
    )
    assert expired.pk in Coverage.objects.values_list("pk", flat=True)


def test_charges_and_coverage_follow_a_patient_merge() -> None:
    survivor, merged = factories.patient(), factories.patient("Duplicate")
    order = factories.completed_order(merged)
    services.save_coverage(merged, {"payer_name": "Acme", "policy_number": "A-1"})
    ris_services.merge_patients(survivor, merged)
    assert charge_of(order).patient == survivor
    assert Coverage.objects.get().patient == survivor


# ---------------------------------------------------------------- posting and voiding


def test_posting_sends_one_dft_p03_per_patient_to_the_billing_system(
    eager: None,
    his: MLLPReceiver,
    personas: Any,
    login: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    dft_destination(his.port)
    anne, bob = factories.patient("Annetest"), factories.patient("Bobtest")
    first = factories.completed_order(anne, referring_physician_name="REFERRER^RITA")
    second = factories.completed_order(anne, procedure_type=factories.procedure("MRHEAD", "MR"))
    third = factories.completed_order(bob)
    left = factories.completed_order(bob)  # not selected: stays pending
    ids = [charge_of(order).pk for order in (first, second, third)]
    with django_capture_on_commit_callbacks(execute=True):
        response = login(personas.admin).post(
            reverse("billing:post"), {"charge": ids, "back": "status=pending"}
        )
    assert response.status_code == 302 and response["Location"].endswith("?status=pending")
    assert set(Charge.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"posted"}
    assert charge_of(left).status == "pending"
    # Two patients, two messages, both acknowledged by the billing system.
    assert [r.message_type for r in his.received] == ["DFT^P03", "DFT^P03"]
    assert set(OutboundMessage.objects.values_list("status", flat=True)) == {"delivered"}
    by_patient = {}
    for received in his.received:
        message = er7.parse(received.text)
        pid = message.first("PID")
        assert pid is not None
        by_patient[pid.value(5, 1)] = [
            (ft1.value(6), ft1.value(7), ft1.value(11, 1, 1), ft1.value(23), ft1.value(25))
            for ft1 in message.all("FT1")
        ]
    assert by_patient["Annetest"] == [
        ("CG", "CTHEAD", "250.00", first.accession_number, "70450"),
        ("CG", "MRHEAD", "250.00", second.accession_number, "70450"),
    ]
    assert by_patient["Bobtest"] == [("CG", "CTHEAD", "250.00", third.accession_number, "70450")]
    posted = charge_of(first)
    assert posted.posted_by == personas.admin and posted.posted_at is not None
    assert posted.posted_message is not None
    assert posted.posted_control_id == posted.posted_message.control_id
    assert posted.posted_control_id in his.control_ids()
    # Posting again is refused and sends nothing more.
    with django_capture_on_commit_callbacks(execute=True):
        login(personas.admin).post(reverse("billing:post"), {"charge": ids[:1]})
    assert len(his.received) == 2


def test_posting_with_no_destination_still_posts_and_says_so(personas: Any, login: Any) -> None:
    Destination.objects.create(name="results", host="127.0.0.1", port=9, message_types="ORU")
    charge = charge_of(factories.completed_order())
    response = login(personas.admin).post(
        reverse("billing:post"), {"charge": [charge.pk]}, follow=True
    )
    assert "no HL7 destination takes DFT" in response.content.decode()
    charge.refresh_from_db()
    assert (charge.status, charge.posted_message, charge.posted_control_id) == ("posted", None, "")
    assert not OutboundMessage.objects.exists()
    # The billing system never heard of it, so voiding it later credits nothing there.
    dft_destination(9)
    services.void_charge(charge, "booked on the wrong patient", actor=personas.admin)
    assert not OutboundMessage.objects.exists()


def test_void_needs_a_reason_and_a_posted_charge_is_credited(
    eager: None,
    his: MLLPReceiver,
    personas: Any,
    login: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    dft_destination(his.port)
    charge = charge_of(factories.completed_order())
    url = reverse("billing:charge-detail", args=[charge.pk])
    client = login(personas.admin)
    response = client.post(url, {"action": "void", "reason": "  "})
    assert response.status_code == 400
    charge.refresh_from_db()
    assert charge.status == "pending"
    with django_capture_on_commit_callbacks(execute=True):
        services.post_charges([charge.pk], actor=personas.admin)
        response = client.post(url, {"action": "void", "reason": "Wrong patient booked"})
    assert response.status_code == 302
    charge.refresh_from_db()
    assert (charge.status, charge.void_reason, charge.voided_by) == (
        "void",
        "Wrong patient booked",
        personas.admin,
    )
    assert charge.void_message is not None
    assert charge.void_control_id == charge.void_message.control_id == his.control_ids()[-1]
    page = client.get(url).content.decode()
    assert charge.posted_control_id in page and charge.void_control_id in page
    credit = er7.parse(his.received[-1].text).first("FT1")
    assert credit is not None
    assert (credit.value(2), credit.value(6), credit.value(10), credit.value(11, 1, 1)) == (
        charge.transaction_id,
        "CD",
        "-1",
        "-250.00",
    )
    assert len(his.received) == 2  # the charge, then its credit
    assert AuditEvent.objects.filter(
        object_type="billing.charge", detail__startswith="charge voided: Wrong patient"
    ).exists()
    # Void again: refused; a pending one voids without any message.
    assert client.post(url, {"action": "void", "reason": "again"}).status_code == 302
    pending = charge_of(factories.completed_order())
    services.void_charge(pending, "duplicate exam", actor=personas.admin)
    assert OutboundMessage.objects.count() == 2


def test_a_voided_exam_is_captured_again_only_on_request(personas: Any, login: Any) -> None:
    order = factories.completed_order()
    charge = services.void_charge(charge_of(order), "price was wrong")
    assert services.capture_missing_charges() == []  # voided on purpose: not "missing"
    url = reverse("billing:charge-detail", args=[charge.pk])
    response = login(personas.admin).post(url, {"action": "recapture"})
    assert response.status_code == 302
    live = Charge.objects.get(order=order, status="pending")
    assert live.pk != charge.pk
    with pytest.raises(ValidationError):
        services.recapture_charge(charge)


def test_a_pending_charge_takes_quantity_and_modifiers(personas: Any, login: Any) -> None:
    charge = charge_of(factories.completed_order())
    url = reverse("billing:charge-detail", args=[charge.pk])
    client = login(personas.admin)
    assert (
        client.post(url, {"action": "adjust", "quantity": 2, "modifiers": "26, lt"}).status_code
        == 302
    )
    charge.refresh_from_db()
    assert (charge.quantity, charge.modifiers, charge.amount) == (2, "26,LT", Decimal("500.00"))
    response = client.post(url, {"action": "adjust", "quantity": 1, "modifiers": "BADMOD"})
    charge.refresh_from_db()
    assert response.status_code == 302 and charge.modifiers == "26,LT"
    # The front desk reads charges but does not change them.
    response = login(personas.front_desk).post(url, {"action": "adjust", "quantity": 3})
    assert response.status_code == 403


# ---------------------------------------------------------------- page, export, totals


def test_who_may_see_post_and_void(personas: Any, client: Any) -> None:
    charge = charge_of(factories.completed_order())
    pages = [
        reverse("billing:charge-list"),
        reverse("billing:charge-detail", args=[charge.pk]),
        reverse("billing:export"),
        reverse("billing:coverage", args=[charge.patient_id]),
    ]
    readers = {"admin", "front_desk"}
    for name, user in personas.all().items():
        client.force_login(user)
        for url in pages:
            status = client.get(url).status_code
            assert status == (200 if name in readers else 403), f"{name} {url}: {status}"
        if name == "admin":
            continue
        assert client.post(reverse("billing:post"), {"charge": [charge.pk]}).status_code == 403
        response = client.post(pages[1], {"action": "void", "reason": "not mine to void"})
        assert response.status_code == 403
    charge.refresh_from_db()
    assert charge.status == "pending"  # the technologist, the front desk ... changed nothing


def test_a_technologist_cannot_post_charges(personas: Any, login: Any) -> None:
    charge = charge_of(factories.completed_order())
    response = login(personas.technologist).post(reverse("billing:post"), {"charge": [charge.pk]})
    assert response.status_code == 403
    charge.refresh_from_db()
    assert charge.status == "pending"


def test_the_navigation_shows_billing_to_front_desk_and_administrators(
    personas: Any, client: Any
) -> None:
    link = f'href="{reverse("billing:charge-list")}"'
    for name, user in personas.all().items():
        client.force_login(user)
        page = client.get(reverse("ris:patient-list")).content.decode()
        assert (link in page) is (name in {"admin", "front_desk"}), name


def test_the_list_filters_by_status_date_and_procedure(personas: Any, login: Any) -> None:
    ct = factories.completed_order()
    mr = factories.completed_order(procedure_type=factories.procedure("MRKNEE", "MR"))
    old = factories.completed_order()
    last_week = timezone.now() - dt.timedelta(days=7)
    # Time passes only in the database: the exam was performed a week ago.
    Charge.objects.filter(order=old).update(performed_at=last_week)
    services.post_charges([charge_of(mr).pk])
    client = login(personas.front_desk)
    url = reverse("billing:charge-list")

    def listed(**query: str) -> set[str]:
        response = client.get(url, query)
        assert response.status_code == 200
        page = response.content.decode()
        return {o.accession_number for o in (ct, mr, old) if o.accession_number in page}

    assert listed() == {ct.accession_number, old.accession_number}  # pending by default
    assert listed(status="posted") == {mr.accession_number}
    assert listed(status="") == {ct.accession_number, mr.accession_number, old.accession_number}
    today = timezone.localdate().isoformat()
    assert listed(status="", date_from=today) == {ct.accession_number, mr.accession_number}
    assert listed(status="", date_to=(timezone.localdate() - dt.timedelta(days=1)).isoformat()) == {
        old.accession_number
    }
    assert listed(status="", procedure="mrknee") == {mr.accession_number}
    assert client.get(url, {"date_from": today, "date_to": "2000-01-01"}).status_code == 400
    assert AuditEvent.objects.filter(action="query", object_type="billing.charge").exists()
    # The front desk sees no post button and no checkboxes.
    assert 'name="charge"' not in client.get(url).content.decode()
    assert 'name="charge"' in login(personas.admin).get(url).content.decode()


def test_the_list_takes_the_same_queries_however_many_charges(personas: Any, login: Any) -> None:
    client = login(personas.admin)
    url = reverse("billing:charge-list")
    factories.completed_order(referring_physician_name="A^B")
    client.get(url)  # session and permissions cached
    with CaptureQueriesContext(connection) as few:
        assert client.get(url).status_code == 200
    for number in range(12):
        factories.completed_order(referring_physician_name=f"DOC{number}^X")
    completed_without_charge()
    with CaptureQueriesContext(connection) as many:
        page = client.get(url).content.decode()
    assert page.count('name="charge"') == 13
    # Session, user, permissions, then one query each: count, flags, the exams without a
    # charge and their count, three totals, status tabs, roles, the rows; the audit event.
    assert len(many) == len(few) <= 15


def test_csv_export_holds_the_filtered_charges_and_is_audited(personas: Any, login: Any) -> None:
    ct = factories.completed_order(referring_physician_name="REFERRER^RITA")
    factories.completed_order(procedure_type=factories.procedure("MRKNEE", "MR", cpt_code="73721"))
    response = login(personas.front_desk).get(
        reverse("billing:export"), {"status": "", "procedure": "70450"}
    )
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert len(rows) == 1
    row = rows[0]
    charge = charge_of(ct)
    assert (row["charge"], row["accession_number"], row["cpt_code"]) == (
        str(charge.pk),
        ct.accession_number,
        "70450",
    )
    assert (row["amount"], row["currency"], row["status"], row["covered"]) == (
        "250.00",
        "USD",
        "pending",
        "no",
    )
    assert row["referring_physician"] == "REFERRER^RITA"
    event = AuditEvent.objects.get(action="export", object_type="billing.charge")
    assert event.actor == personas.front_desk and "1 charge(s)" in event.detail
    # Text a spreadsheet would run as a formula goes out quoted.
    services.void_charge(charge, '=HYPERLINK("http://example.invalid")')
    response = login(personas.front_desk).get(reverse("billing:export"), {"status": "void"})
    [row] = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert row["void_reason"] == '\'=HYPERLINK("http://example.invalid")'


def test_totals_per_day_modality_and_referring_physician_take_one_query_each() -> None:
    factories.completed_order(referring_physician_name="REFERRER^RITA")
    factories.completed_order(referring_physician_name="REFERRER^RITA")
    mr = factories.procedure("MRKNEE", "MR", price="400.00")
    factories.completed_order(procedure_type=mr, referring_physician_name="OTHER^OLGA")
    yesterday = factories.completed_order(referring_physician_name="OTHER^OLGA")
    voided = factories.completed_order(referring_physician_name="REFERRER^RITA")
    Charge.objects.filter(order=yesterday).update(
        performed_at=timezone.now() - dt.timedelta(days=1)
    )
    services.void_charge(charge_of(voided), "entered twice")
    criteria = selectors.ChargeFilter()
    with CaptureQueriesContext(connection) as queries:
        by_day = selectors.totals_by_day(criteria)
        by_modality = selectors.totals_by_modality(criteria)
        by_referrer = selectors.totals_by_referrer(criteria)
    assert len(queries) == 3
    today, before = timezone.localdate(), timezone.localdate() - dt.timedelta(days=1)
    assert [(r["day"], r["count"], r["total"]) for r in by_day] == [
        (before, 1, Decimal("250.00")),
        (today, 3, Decimal("900.00")),
    ]
    assert [(r["modality"], r["count"], r["total"]) for r in by_modality] == [
        ("CT", 3, Decimal("750.00")),
        ("MR", 1, Decimal("400.00")),
    ]
    assert [(r["referring_physician_name"], r["count"], r["total"]) for r in by_referrer] == [
        ("OTHER^OLGA", 2, Decimal("650.00")),
        ("REFERRER^RITA", 2, Decimal("500.00")),
    ]
    narrowed = selectors.totals_by_modality(selectors.ChargeFilter(date_from=today))
    assert [(r["modality"], r["count"]) for r in narrowed] == [("CT", 2), ("MR", 1)]


# ---------------------------------------------------------------- coverage page


def test_the_front_desk_records_coverage_on_the_patients_billing_page(
    personas: Any, login: Any
) -> None:
    patient = factories.patient()
    url = reverse("billing:coverage", args=[patient.pk])
    client = login(personas.front_desk)
    assert "No coverage recorded" in client.get(url).content.decode()
    data = {
        "priority": 1,
        "payer_name": "Acme Health",
        "plan_name": "Gold",
        "policy_number": "AH-0042",
        "group_number": "G-7",
        "subscriber_name": "TESTPERSON^ALEX",
        "subscriber_relationship": "SEL",
        "valid_from": "2025-01-01",
        "valid_to": "",
    }
    assert client.post(url, data).status_code == 302
    coverage = Coverage.objects.get(patient=patient)
    assert (coverage.payer_name, coverage.policy_number) == ("Acme Health", "AH-0042")
    assert "AH-0042" in client.get(url).content.decode()
    # The same priority again, overlapping: refused with the reason, nothing saved.
    response = client.post(url, {**data, "policy_number": "AH-0043"})
    assert response.status_code == 400 and "already has a primary" in response.content.decode()
    # Change it, then remove it; every step is audited against the patient.
    assert (
        client.post(url, {**data, "coverage": coverage.pk, "plan_name": "Silver"}).status_code
        == 302
    )
    coverage.refresh_from_db()
    assert coverage.plan_name == "Silver"
    assert client.post(reverse("billing:coverage-delete", args=[coverage.pk])).status_code == 302
    assert not Coverage.objects.exists()
    actions = list(
        AuditEvent.objects.filter(object_type="billing.coverage", patient_key=str(patient.pk))
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions == ["create", "update", "delete"]
    # The patient's page links here for those who may see it; the technologist may not.
    link = f'href="{url}"'
    assert link in client.get(reverse("ris:patient-detail", args=[patient.pk])).content.decode()
    technologist = login(personas.technologist)
    assert (
        link
        not in technologist.get(reverse("ris:patient-detail", args=[patient.pk])).content.decode()
    )
    assert technologist.get(url).status_code == 403
