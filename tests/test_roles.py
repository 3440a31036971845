"""Role groups, their model permissions, and the admin over every model."""

from __future__ import annotations

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.urls import reverse

from core import roles
from core.permissions import can
from core.services import sync_roles
from tests import factories

pytestmark = pytest.mark.django_db

OUR_APPS = ("core", "ris", "pacs", "reporting", "worklist")


def test_create_roles_makes_every_group_and_is_idempotent(capsys) -> None:  # type: ignore[no-untyped-def]
    call_command("create_roles")
    call_command("create_roles")
    assert set(Group.objects.values_list("name", flat=True)) == set(roles.ALL_ROLES)
    front_desk = Group.objects.get(name=roles.FRONT_DESK)
    assert front_desk.permissions.filter(codename="add_order").exists()
    assert not front_desk.permissions.filter(codename="view_auditevent").exists()
    assert "front desk:" in capsys.readouterr().out


def test_sync_roles_removes_a_permission_granted_by_hand() -> None:
    sync_roles()
    group = Group.objects.get(name=roles.TRANSCRIPTIONIST)
    from django.contrib.auth.models import Permission

    group.permissions.add(Permission.objects.get(codename="view_auditevent"))
    sync_roles()
    assert not group.permissions.filter(codename="view_auditevent").exists()


@pytest.mark.parametrize(
    ("persona", "perm", "expected"),
    [
        ("front_desk", "ris.add_order", True),
        ("front_desk", "reporting.sign_report", False),
        ("technologist", "ris.change_scheduledprocedurestep", True),
        ("technologist", "ris.add_order", False),
        ("radiologist", "reporting.sign_report", True),
        ("transcriptionist", "reporting.change_report", True),
        ("transcriptionist", "reporting.sign_report", False),
        ("referring_physician", "ris.view_order", False),
        ("patient", "ris.view_patient", False),
        ("admin", "core.view_auditevent", True),
        ("outsider", "ris.view_patient", False),
    ],
)
def test_model_permissions_by_role(personas, persona: str, perm: str, expected: bool) -> None:
    assert can(getattr(personas, persona), perm) is expected


def test_object_grants_reach_only_the_granted_rows(personas) -> None:
    mine = factories.order(referring_physician=personas.referring_physician)
    other = factories.order()
    doctor = personas.referring_physician
    assert can(doctor, "ris.view_order", mine)
    assert can(doctor, "ris.view_patient", mine.patient)
    assert not can(doctor, "ris.view_order", other)
    assert not can(doctor, "ris.view_patient", other.patient)


def test_inactive_user_can_do_nothing(personas) -> None:
    personas.front_desk.is_active = False
    personas.front_desk.save()
    assert not can(personas.front_desk, "ris.view_patient")


def test_every_model_has_an_admin_page() -> None:
    models = [model for app in OUR_APPS for model in apps.get_app_config(app).get_models()]
    assert models
    missing = [model._meta.label for model in models if model not in admin.site._registry]
    assert missing == []


def test_admin_change_lists_load(client, personas) -> None:  # type: ignore[no-untyped-def]
    personas.admin.is_superuser = True
    personas.admin.save()
    factories.order()
    client.force_login(personas.admin)
    for model in admin.site._registry:
        if model._meta.app_label in OUR_APPS:
            url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
            assert client.get(url).status_code == 200, url


def test_migrations_are_complete() -> None:
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)
