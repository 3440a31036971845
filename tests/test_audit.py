"""The audit trail: who did what to which patient, when, from where, with what outcome."""

from __future__ import annotations

import ast
import threading
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from core import audit
from core.models import AuditEvent
from tests import factories
from tests.netutil import DEADLINE, wait_until
from tests.personas import PASSWORD

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parent.parent


def test_login_logout_and_failed_login_are_recorded(personas, client) -> None:
    client.post(
        reverse("login"), {"username": "frontdesk", "password": "wrong"}, REMOTE_ADDR="10.9.8.7"
    )
    client.post(reverse("login"), {"username": "frontdesk", "password": PASSWORD})
    client.post(reverse("logout"))
    events = list(AuditEvent.objects.order_by("id").values_list("action", "outcome", "actor_name"))
    assert events == [
        ("login_failed", "failure", "frontdesk"),
        ("login", "success", "frontdesk"),
        ("logout", "success", "frontdesk"),
    ]
    assert AuditEvent.objects.get(action="login_failed").source_address == "10.9.8.7"


def test_viewing_a_patient_records_who_what_and_from_where(personas, login) -> None:
    patient = factories.patient(family="Viewed")
    login(personas.front_desk).get(
        reverse("ris:patient-detail", args=[patient.pk]), REMOTE_ADDR="10.1.2.3"
    )
    event = AuditEvent.objects.get(action="view")
    assert event.actor == personas.front_desk
    assert event.object_type == "ris.patient"
    assert event.patient_key == str(patient.pk)
    assert event.source_address == "10.1.2.3"
    assert event.channel == "web"
    assert event.outcome == "success"


def test_changes_through_services_are_recorded_with_the_patient(personas) -> None:
    order = factories.order()
    event = AuditEvent.objects.get(action="create", object_type="ris.order")
    assert event.patient_key == str(order.patient.pk)
    assert event.object_repr == str(order)
    assert AuditEvent.objects.filter(action="create", object_type="ris.patient").count() == 1


def test_listing_is_recorded_as_a_query_with_its_count(personas, login) -> None:
    factories.patient()
    factories.patient()
    login(personas.front_desk).get(reverse("ris:patient-list"), {"q": ""})
    event = AuditEvent.objects.get(action="query", object_type="ris.patient")
    assert event.detail.startswith("2 result(s)")


def test_audit_events_cannot_be_changed_or_deleted(personas) -> None:
    event = audit.record(audit.Action.VIEW, actor=personas.admin)
    event.detail = "tampered"
    with pytest.raises(ValueError, match="never changed"):
        event.save()
    with pytest.raises(ValueError, match="never deleted"):
        event.delete()


def test_admin_pages_do_not_allow_editing_audit_events(personas, client) -> None:
    personas.admin.is_superuser = True
    personas.admin.save()
    client.force_login(personas.admin)
    event = audit.record(audit.Action.VIEW, actor=personas.admin)
    assert client.get(reverse("admin:core_auditevent_changelist")).status_code == 200
    assert client.get(reverse("admin:core_auditevent_add")).status_code == 403
    response = client.post(
        reverse("admin:core_auditevent_delete", args=[event.pk]), {"post": "yes"}
    )
    assert response.status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def _writes_audit_rows(path: Path) -> bool:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in {"create", "bulk_create", "update"}:
            source = ast.unparse(node.value)
            if "AuditEvent" in source:
                return True
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "AuditEvent":
            return True
    return False


def test_only_core_audit_writes_audit_rows() -> None:
    apps = ["config", "core", "ris", "pacs", "reporting", "worklist"]
    writers = {
        str(path.relative_to(ROOT))
        for app in apps
        for path in (ROOT / app).rglob("*.py")
        if "migrations" not in path.parts and _writes_audit_rows(path)
    }
    assert writers == {"core/audit.py"}


@pytest.mark.django_db(transaction=True)
def test_record_soon_commits_from_the_writer_and_flush_waits_for_it() -> None:
    audit.record_soon(
        audit.Action.ASSOCIATION,
        actor_name="MODALITY1",
        channel=audit.Channel.DICOM,
        source_address="192.0.2.7:104",
        detail="accepted by RISPACS",
    )
    assert audit.flush(timeout=10)
    event = AuditEvent.objects.get(action="association", actor_name="MODALITY1")
    assert (event.channel, event.source_address, event.outcome) == (
        "dicom",
        "192.0.2.7:104",
        "success",
    )
    assert event.occurred_at is not None


@pytest.mark.django_db(transaction=True)
def test_a_held_event_is_written_when_its_connection_ends_and_flush_waits_for_it() -> None:
    """audit.hold: nothing is written at once, nor with the thread's other events; at the
    connection's end write_held commits it, with the time it was held; flush meanwhile
    waits for events held on any thread."""
    facts: dict[str, Any] = {"channel": audit.Channel.DICOM, "source_address": "192.0.2.9"}
    held = threading.Event()
    end = threading.Event()
    times: list[Any] = []

    def connection() -> None:
        audit.hold(audit.Action.ASSOCIATION, actor_name="HELD", detail="accepted", **facts)
        times.append(timezone.now())
        audit.record(audit.Action.QUERY, actor_name="HELD", detail="a query", **facts)
        held.set()
        end.wait(DEADLINE)
        assert audit.write_held()

    thread = threading.Thread(target=connection)
    thread.start()
    assert held.wait(DEADLINE)
    assert not audit.flush(timeout=0.2)  # held by a connection still open
    assert list(AuditEvent.objects.filter(actor_name="HELD").values_list("action", flat=True)) == [
        "query"
    ]
    end.set()
    assert audit.flush(timeout=DEADLINE)
    thread.join(DEADLINE)
    association = AuditEvent.objects.get(actor_name="HELD", action="association")
    query = AuditEvent.objects.get(actor_name="HELD", action="query")
    assert association.occurred_at <= times[0] <= query.occurred_at
    assert association.pk > query.pk  # written later, dated when it happened


@pytest.mark.django_db(transaction=True)
def test_events_of_a_request_are_written_once_it_is_answered_or_later_when_idle(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """audit.record_answered inside audit.answering: nothing is written while the request
    is answered (its facts can still change); the row is written once it is, before the
    thread goes on. With later=True, it waits for send_answered (the connection idle) and
    is waited for by the next request or the connection's end; flush waits for that. A
    row the database refuses goes to the writer, and the thread's connection goes on."""
    from django.db import connection as main_connection

    facts: dict[str, Any] = {"channel": audit.Channel.DICOM, "detail": "a query"}
    steps = {name: threading.Event() for name in ("answering", "answer", "answered", "end")}

    def wait(name: str) -> None:
        assert steps[name].wait(DEADLINE), name

    def connection() -> None:
        with audit.answering():
            found = audit.record_answered(audit.Action.QUERY, actor_name="ANSWERED1", **facts)
            steps["answering"].set()
            wait("answer")
            found["detail"] = "3 of 9 sent"
        assert audit.unsent_since() is None
        with audit.answering(later=True):
            audit.record_answered(audit.Action.QUERY, actor_name="ANSWERED2", **facts)
        assert audit.unsent_since() is not None  # kept: the connection is not idle yet
        audit.send_answered()
        steps["answered"].set()
        wait("end")
        with audit.answering():  # the next request: the last one's row is waited for first
            audit.record(audit.Action.QUERY, actor_name="ANSWERED3", **facts)
        assert audit.write_held()

    thread = threading.Thread(target=connection)
    thread.start()
    wait("answering")
    assert not AuditEvent.objects.filter(actor_name="ANSWERED1").exists()
    steps["answer"].set()
    wait("answered")
    assert AuditEvent.objects.get(actor_name="ANSWERED1").detail == "3 of 9 sent"
    wait_until(lambda: AuditEvent.objects.filter(actor_name="ANSWERED2").first())
    if main_connection.vendor == "postgresql":
        assert not audit.flush(timeout=0.2)  # sent, not yet waited for by its thread
    steps["end"].set()
    thread.join(DEADLINE)
    assert audit.flush(timeout=DEADLINE)
    assert AuditEvent.objects.filter(actor_name="ANSWERED3").count() == 1
    if main_connection.vendor != "postgresql":
        return  # elsewhere the row is written at once, once answered
    built = audit._build

    def unwritable(action: str, *args: Any, **kwargs: Any) -> AuditEvent:
        event = built(action, *args, **kwargs)
        if kwargs.get("actor_name") == "REFUSED":
            event.outcome = None  # type: ignore[assignment]  # NOT NULL: the INSERT fails
        return event

    monkeypatch.setattr(audit, "_build", unwritable)
    monkeypatch.setattr(audit, "WRITE_ATTEMPTS", 1)
    with audit.answering():
        audit.record_answered(audit.Action.QUERY, actor_name="REFUSED", **facts)
    audit.record(audit.Action.QUERY, actor_name="AFTER", **facts)
    assert audit.write_held()  # the refused row waited for, and the writer drained
    assert "audit events handed to the writer" in caplog.text
    assert "audit event cannot be written" in caplog.text  # whole, in the log
    assert not AuditEvent.objects.filter(actor_name="REFUSED").exists()
    assert AuditEvent.objects.filter(actor_name="AFTER").count() == 1
