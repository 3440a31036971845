"""The navigation bar: which links each role sees."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core import roles


@dataclass(frozen=True)
class NavItem:
    label: str
    url_name: str
    roles: tuple[str, ...]
    staff_only: bool = False


NAV_ITEMS = (
    NavItem("Home", "home", roles.ALL_ROLES),
    NavItem(
        "Patients",
        "ris:patient-list",
        (
            roles.FRONT_DESK,
            roles.TECHNOLOGIST,
            roles.RADIOLOGIST,
            roles.ADMINISTRATOR,
            roles.REFERRING_PHYSICIAN,
        ),
    ),
    NavItem(
        "Orders",
        "ris:order-list",
        (
            roles.FRONT_DESK,
            roles.TECHNOLOGIST,
            roles.RADIOLOGIST,
            roles.ADMINISTRATOR,
            roles.REFERRING_PHYSICIAN,
        ),
    ),
    NavItem(
        "Studies",
        "pacs:study-list",
        (
            roles.TECHNOLOGIST,
            roles.RADIOLOGIST,
            roles.ADMINISTRATOR,
            roles.REFERRING_PHYSICIAN,
            roles.PATIENT,
        ),
    ),
    NavItem(
        "Calendar",
        "ris:calendar",
        (roles.FRONT_DESK, roles.TECHNOLOGIST, roles.RADIOLOGIST, roles.ADMINISTRATOR),
    ),
    NavItem("Reconciliation", "pacs:reconciliation-list", (roles.FRONT_DESK, roles.ADMINISTRATOR)),
    NavItem("Reading", "reporting:worklist", (roles.RADIOLOGIST, roles.ADMINISTRATOR)),
    NavItem("Transcription", "reporting:transcription-queue", (roles.TRANSCRIPTIONIST,)),
    NavItem("Reports", "reporting:report-list", (roles.REFERRING_PHYSICIAN, roles.PATIENT)),
    NavItem(
        "Critical findings",
        "reporting:critical-list",
        (roles.RADIOLOGIST, roles.REFERRING_PHYSICIAN, roles.ADMINISTRATOR),
    ),
    NavItem("Turnaround", "reporting:turnaround", (roles.ADMINISTRATOR,)),
    NavItem("Audit trail", "core:audit-list", (roles.ADMINISTRATOR,)),
    NavItem("HL7", "hl7:message-list", (roles.ADMINISTRATOR,)),
    NavItem("Billing", "billing:charge-list", (roles.FRONT_DESK, roles.ADMINISTRATOR)),
    NavItem("Admin", "admin:index", (roles.ADMINISTRATOR,), staff_only=True),
)


def items_for(user: Any) -> list[NavItem]:
    if not user.is_authenticated:
        return []
    return [
        item
        for item in NAV_ITEMS
        if any(roles.has_role(user, role) for role in item.roles)
        and (not item.staff_only or user.is_staff)
    ]
