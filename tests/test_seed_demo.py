"""Demo seeding: the logins, their roles, today's list, the referrer's grants, idempotence."""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from core import roles
from core.models import AuditEvent
from core.permissions import can
from ris import selectors
from ris.demo import DEMO_BOOKINGS, DEMO_PATIENTS, DEMO_USERS, DemoRefused, seed_demo
from ris.models import Order, Patient, PatientIdentifier, Priority, ProcedureType, Room
from tests import factories

EXPECTED_ROLES = {
    "frontdesk": roles.FRONT_DESK,
    "tech": roles.TECHNOLOGIST,
    "radiologist": roles.RADIOLOGIST,
    "typist": roles.TRANSCRIPTIONIST,
    "referrer": roles.REFERRING_PHYSICIAN,
    "patient": roles.PATIENT,
    "admin": roles.ADMINISTRATOR,
}


def _counts() -> dict[str, int]:
    models: list[Any] = [User, ProcedureType, Room, Patient, PatientIdentifier, Order, AuditEvent]
    return {model.__name__: model.objects.count() for model in models}


def test_creates_one_login_per_role_with_the_documented_password(db: None) -> None:
    seed_demo(force=True)

    assert {user.username: user.role for user in DEMO_USERS} == EXPECTED_ROLES
    for demo in DEMO_USERS:
        user = User.objects.get(username=demo.username)
        assert user.check_password(f"demo-{demo.username}")
        assert list(user.groups.values_list("name", flat=True)) == [demo.role]
        assert not user.is_superuser
    assert User.objects.get(username="admin").is_staff
    assert not User.objects.get(username="frontdesk").is_staff


def test_books_todays_list_across_the_rooms(db: None) -> None:
    summary = seed_demo(force=True)

    steps = list(selectors.steps_for_day(timezone.localdate()))
    assert len(steps) == len(DEMO_BOOKINGS) == len(summary.orders) >= 10
    assert all(step.room is not None for step in steps)
    assert len({step.room_id for step in steps}) >= 8
    assert all(step.station_ae_title for step in steps)
    orders = Order.objects.all()
    assert orders.filter(priority=Priority.STAT).count() == 1
    assert orders.filter(priority=Priority.ROUTINE).count() == len(DEMO_BOOKINGS) - 1
    assert Patient.objects.count() == len(DEMO_PATIENTS)
    assert set(PatientIdentifier.objects.values_list("issuer__namespace_id", flat=True)) == {"DEMO"}


def test_referring_physician_sees_exactly_their_referrals(db: None) -> None:
    seed_demo(force=True)
    referrer = User.objects.get(username="referrer")
    referred = set(Order.objects.filter(referring_physician=referrer))
    others = set(Order.objects.exclude(referring_physician=referrer))

    visible = set(selectors.orders_visible_to(referrer))

    assert referred and others
    assert visible == referred
    assert all(can(referrer, "ris.view_order", order) for order in referred)
    assert not any(can(referrer, "ris.view_order", order) for order in others)
    assert set(selectors.patients_visible_to(referrer)) == {order.patient for order in referred}


def test_patient_login_sees_only_their_own_record(db: None) -> None:
    seed_demo(force=True)
    user = User.objects.get(username="patient")

    own = Patient.objects.get(user=user)

    assert own.identifiers.get().value == "DEMO0001"
    assert list(selectors.patients_visible_to(user)) == [own]
    assert not selectors.orders_visible_to(user).exists()  # orders are not granted to patients


def test_second_run_changes_nothing(db: None) -> None:
    first = seed_demo(force=True)
    before = _counts()

    second = seed_demo(force=True)

    assert first.changed
    assert not second.changed
    assert second.procedures.unchanged and not second.procedures.created
    assert _counts() == before


def test_a_later_day_gets_its_own_list(db: None) -> None:
    seed_demo(force=True)
    tomorrow = timezone.localdate() + dt.timedelta(days=1)

    summary = seed_demo(force=True, today=tomorrow)

    assert len(summary.orders) == len(DEMO_BOOKINGS)
    assert not (summary.users or summary.patients or summary.rooms or summary.patient_linked)
    assert selectors.steps_for_day(tomorrow).count() == len(DEMO_BOOKINGS)


def test_keeps_existing_accounts_and_rooms(db: None) -> None:
    factories.room("CT 1", "CT", "CTOLD")
    User.objects.create_user("admin", password="their-own-password")

    summary = seed_demo(force=True)

    admin = User.objects.get(username="admin")
    assert admin.check_password("their-own-password")
    assert "admin" not in summary.users
    assert "CT 1" not in summary.rooms
    assert Room.objects.get(name="CT 1").station_ae_title == "CTOLD"


def test_refused_when_debug_is_off(db: None, settings: Any) -> None:
    settings.DEBUG = False

    with pytest.raises(DemoRefused):
        seed_demo()
    with pytest.raises(CommandError, match="--force"):
        call_command("seed_demo", stdout=io.StringIO())

    assert not User.objects.exists()


def test_command_runs_in_debug_and_says_when_already_there(db: None, settings: Any) -> None:
    settings.DEBUG = True
    out = io.StringIO()

    call_command("seed_demo", stdout=out)
    first = out.getvalue()
    call_command("seed_demo", stdout=out)

    assert "demo-frontdesk" in first
    assert f"orders booked: {len(DEMO_BOOKINGS)}" in first
    assert out.getvalue()[len(first) :].strip() == "Demo data is already there; nothing changed."


def test_force_runs_with_debug_off(db: None, settings: Any) -> None:
    settings.DEBUG = False

    call_command("seed_demo", "--force", stdout=io.StringIO())

    assert Order.objects.count() == len(DEMO_BOOKINGS)
