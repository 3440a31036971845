"""Writes of core: the role groups and their permissions."""

from __future__ import annotations

from django.contrib.auth.models import Group, Permission
from django.db import transaction

from core.roles import ROLES


@transaction.atomic
def sync_roles() -> dict[str, int]:
    """Create every role's group and set its model permissions to exactly the declared ones."""
    wanted = {perm for role in ROLES.values() for perm in role.permissions}
    known = {
        f"{perm.content_type.app_label}.{perm.codename}": perm
        for perm in Permission.objects.select_related("content_type")
    }
    missing = sorted(wanted - known.keys())
    if missing:
        raise LookupError(f"permissions not found (run migrate first?): {', '.join(missing)}")
    counts: dict[str, int] = {}
    for role in ROLES.values():
        group, _ = Group.objects.get_or_create(name=role.name)
        group.permissions.set([known[perm] for perm in role.permissions])
        counts[role.name] = len(role.permissions)
    return counts
