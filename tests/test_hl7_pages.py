"""The HL7 interface page: only administrators, searchable, re-process and retry buttons."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from core.models import AuditEvent
from ris.hl7 import inbound
from ris.hl7.models import Destination, InboundMessage, OutboundMessage
from ris.models import Order
from tests import factories
from tests.hl7util import MLLPReceiver, adt, orm

pytestmark = pytest.mark.django_db


def receive(*messages: bytes) -> None:
    for content in messages:
        inbound.receive(content, peer="10.0.0.5:4000")


@pytest.fixture
def traffic(settings: Any) -> None:
    """A morning's messages: two registrations, one order, one order with a bad code."""
    factories.procedure("CTHEAD", "CT")
    receive(
        adt("ADT-1", "A04", "PAT-0001^^^HOSP^MR", "TESTPERSON^ALEX"),
        adt("ADT-2", "A04", "PAT-0002^^^HOSP^MR", "SAMPLEWOMAN^BEA"),
        orm("ORM-1", placer="PLC-1", identifiers="PAT-0001^^^HOSP^MR"),
        orm("ORM-BAD", placer="PLC-2", code="MRKNEE", identifiers="PAT-0002^^^HOSP^MR"),
    )


def urls() -> list[tuple[str, str]]:
    """Every page of the interface, with the method it is used with."""
    message = InboundMessage.objects.first()
    destination = Destination.objects.create(
        name="his", host="127.0.0.1", port=9, message_types="ADT"
    )
    out = OutboundMessage.objects.create(
        destination=destination, message_type="ADT^A08", control_id="X1", raw="MSH|^~\\&|\r"
    )
    assert message is not None
    return [
        ("get", reverse("hl7:message-list")),
        ("get", reverse("hl7:message-list") + "?direction=out"),
        ("get", reverse("hl7:inbound-detail", args=[message.pk])),
        ("get", reverse("hl7:outbound-detail", args=[out.pk])),
        ("post", reverse("hl7:inbound-reprocess", args=[message.pk])),
        ("post", reverse("hl7:outbound-retry", args=[out.pk])),
    ]


def test_only_administrators_reach_the_interface(personas: Any, client: Any, traffic: None) -> None:
    pages = urls()
    for name, user in personas.all().items():
        client.force_login(user)
        for method, url in pages:
            if method == "post" and name == "admin":
                continue  # what the buttons do is tested below
            status = getattr(client, method)(url).status_code
            expected = 200 if name == "admin" else 403
            assert status == expected, f"{name} {method} {url}: {status}"
    client.logout()
    for method, url in pages:
        response = getattr(client, method)(url)
        assert response.status_code == 302 and "/login/" in response["Location"]


def test_the_navigation_shows_hl7_to_administrators_only(personas: Any, login: Any) -> None:
    link = f'href="{reverse("hl7:message-list")}"'
    assert link in login(personas.admin).get(reverse("core:audit-list")).content.decode()
    page = login(personas.front_desk).get(reverse("ris:today")).content.decode()
    assert link not in page


def test_messages_in_are_listed_and_searchable(personas: Any, login: Any, traffic: None) -> None:
    client = login(personas.admin)
    page = client.get(reverse("hl7:message-list")).content.decode()
    for control_id in ("ADT-1", "ADT-2", "ORM-1", "ORM-BAD"):
        assert control_id in page
    assert "OBR-4" in page  # the failed one says where

    def found(**query: str) -> set[str]:
        response = client.get(reverse("hl7:message-list"), query)
        assert response.status_code == 200
        return {
            m.control_id
            for m in InboundMessage.objects.all()
            if f"<code>{m.control_id}</code>" in response.content.decode()
        }

    assert found(patient="samplewoman") == {"ADT-2", "ORM-BAD"}
    assert found(patient="PAT-0001") == {"ADT-1", "ORM-1"}
    assert found(patient="PLC-1") == {"ORM-1"}
    patient_pk = InboundMessage.objects.get(control_id="ADT-1").patient_id
    assert found(patient=str(patient_pk)) == {"ADT-1", "ORM-1"}
    assert found(message_type="ORM") == {"ORM-1", "ORM-BAD"}
    assert found(message_type="adt^a04") == {"ADT-1", "ADT-2"}
    assert found(status="error") == {"ORM-BAD"}
    assert found(status="accepted", message_type="ORM") == {"ORM-1"}
    assert AuditEvent.objects.filter(
        action="query", object_type="hl7.inboundmessage", actor_name="admin"
    ).exists()


def test_the_list_takes_the_same_queries_however_many_messages(
    personas: Any, login: Any, traffic: None
) -> None:
    client = login(personas.admin)
    url = reverse("hl7:message-list")
    client.get(url)  # session and permissions cached
    with CaptureQueriesContext(connection) as few:
        client.get(url)
    receive(*(adt(f"MORE-{n}", "A04", f"MORE-{n}^^^HOSP^MR") for n in range(15)))
    with CaptureQueriesContext(connection) as many:
        client.get(url)
    assert len(many) == len(few)
    with CaptureQueriesContext(connection) as outbound:
        client.get(url, {"direction": "out"})
    assert len(outbound) <= len(few)


def test_detail_shows_the_message_and_our_ack_and_is_audited(
    personas: Any, login: Any, traffic: None
) -> None:
    message = InboundMessage.objects.get(control_id="ORM-1")
    page = login(personas.admin).get(reverse("hl7:inbound-detail", args=[message.pk]))
    text = page.content.decode()
    assert "ORC|NW|PLC-1" in text
    assert "MSA|AA|ORM-1" in text
    assert "Re-process" not in text  # applied already
    event = AuditEvent.objects.get(action="view", object_type="hl7.inboundmessage")
    assert event.patient_key == str(message.patient_id)


def test_reprocessing_a_failed_message_applies_it(personas: Any, login: Any, traffic: None) -> None:
    failed = InboundMessage.objects.get(control_id="ORM-BAD")
    assert failed.status == InboundMessage.Status.ERROR
    client = login(personas.admin)
    detail = reverse("hl7:inbound-detail", args=[failed.pk])
    assert "Re-process this message" in client.get(detail).content.decode()

    # Still failing: the catalogue lacks the code; it says so and changes nothing.
    response = client.post(reverse("hl7:inbound-reprocess", args=[failed.pk]), follow=True)
    assert "still fails" in response.content.decode()
    assert not Order.objects.filter(placer_order_number="PLC-2").exists()

    factories.procedure("MRKNEE", "MR")  # the catalogue is fixed
    response = client.post(reverse("hl7:inbound-reprocess", args=[failed.pk]), follow=True)
    assert "applied" in response.content.decode()
    failed.refresh_from_db()
    assert (failed.status, failed.attempts, failed.reprocessed_by) == ("accepted", 3, "admin")
    order = Order.objects.get(placer_order_number="PLC-2")
    # The change is the administrator's, made through the HL7 channel.
    assert AuditEvent.objects.filter(
        object_type="ris.order", object_id=str(order.pk), actor_name="admin", channel="hl7"
    ).exists()
    # Once applied, it cannot be applied again.
    response = client.post(reverse("hl7:inbound-reprocess", args=[failed.pk]), follow=True)
    assert "applied already" in response.content.decode()
    assert Order.objects.filter(placer_order_number="PLC-2").count() == 1


def test_retry_now_sends_an_undelivered_message(
    personas: Any, login: Any, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from config.celery import app

    eager = app.conf.task_always_eager  # read before the settings change: Celery loads lazily
    settings.CELERY_TASK_ALWAYS_EAGER = True
    app.conf.task_always_eager = True
    his = MLLPReceiver()
    try:
        Destination.objects.create(name="his", host="127.0.0.1", port=his.port, message_types="ADT")
        patient = factories.patient()
        from ris import services

        with django_capture_on_commit_callbacks(execute=True):
            services.update_patient(patient, {"given_name": "RETRIED"})
        message = OutboundMessage.objects.get()
        assert message.status == "retrying"  # the receiver was down
        client = login(personas.admin)
        page = client.get(reverse("hl7:message-list"), {"direction": "out"}).content.decode()
        assert message.control_id in page
        detail = client.get(reverse("hl7:outbound-detail", args=[message.pk])).content.decode()
        assert "ConnectionRefusedError" in detail and "Retry now" in detail
        his.up()
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(reverse("hl7:outbound-retry", args=[message.pk]), follow=True)
        assert response.status_code == 200
        message.refresh_from_db()
        assert message.status == "delivered"
        assert his.control_ids() == [message.control_id]
        assert AuditEvent.objects.filter(
            object_type="hl7.outboundmessage", actor_name="admin", detail__startswith="retry now"
        ).exists()
    finally:
        his.close()
        app.conf.task_always_eager = eager
