"""The department's roles, as Django groups, and the model permissions each one holds.

Per-object grants (a referring physician's own orders, a patient's own record) are
django-guardian object permissions given by the services that create those objects.
"""

from __future__ import annotations

from dataclasses import dataclass

FRONT_DESK = "front desk"
TECHNOLOGIST = "technologist"
RADIOLOGIST = "radiologist"
TRANSCRIPTIONIST = "transcriptionist"
REFERRING_PHYSICIAN = "referring physician"
PATIENT = "patient"
ADMINISTRATOR = "administrator"

ALL_ROLES = (
    FRONT_DESK,
    TECHNOLOGIST,
    RADIOLOGIST,
    TRANSCRIPTIONIST,
    REFERRING_PHYSICIAN,
    PATIENT,
    ADMINISTRATOR,
)


@dataclass(frozen=True)
class Role:
    name: str
    # "app_label.codename" model permissions granted to every member of the group.
    permissions: tuple[str, ...]


def _crud(app: str, model: str, *actions: str) -> tuple[str, ...]:
    return tuple(f"{app}.{action}_{model}" for action in actions)


_VIEW_CLINICAL = (
    *_crud("ris", "patient", "view"),
    *_crud("ris", "patientidentifier", "view"),
    *_crud("ris", "order", "view"),
    *_crud("ris", "requestedprocedure", "view"),
    *_crud("ris", "scheduledprocedurestep", "view"),
    *_crud("ris", "proceduretype", "view"),
    *_crud("ris", "room", "view"),
)

ROLES: dict[str, Role] = {
    FRONT_DESK: Role(
        FRONT_DESK,
        (
            *_VIEW_CLINICAL,
            *_crud("ris", "patient", "add", "change"),
            *_crud("ris", "patientidentifier", "add", "change", "delete"),
            *_crud("ris", "order", "add", "change"),
            *_crud("ris", "requestedprocedure", "add", "change"),
            *_crud("ris", "scheduledprocedurestep", "add", "change"),
            "ris.schedule_order",  # book, move and cancel in the calendar
            *_crud("pacs", "reconciliationitem", "view", "change"),
            # Billing: the charge list and its CSV; the patients' insurance coverage.
            *_crud("billing", "charge", "view"),
            "billing.export_charge",
            *_crud("billing", "coverage", "view", "add", "change", "delete"),
        ),
    ),
    TECHNOLOGIST: Role(
        TECHNOLOGIST,
        (
            *_VIEW_CLINICAL,
            *_crud("ris", "scheduledprocedurestep", "change"),
            "ris.perform_scheduledprocedurestep",  # start, complete, no-show on the board
            *_crud("pacs", "study", "view"),
            *_crud("pacs", "series", "view"),
            *_crud("pacs", "instance", "view"),
            # The board flags studies received without an order; the front desk fixes them.
            *_crud("pacs", "reconciliationitem", "view"),
        ),
    ),
    RADIOLOGIST: Role(
        RADIOLOGIST,
        (
            *_VIEW_CLINICAL,
            *_crud("pacs", "study", "view"),
            *_crud("pacs", "series", "view"),
            *_crud("pacs", "instance", "view"),
            *_crud("reporting", "report", "view", "add", "change"),
            "reporting.sign_report",
            *_crud("reporting", "addendum", "view", "add"),
            *_crud("reporting", "dictation", "view", "add"),
            *_crud("reporting", "readingclaim", "view", "add"),
            *_crud("reporting", "reporttemplate", "view"),
        ),
    ),
    TRANSCRIPTIONIST: Role(
        TRANSCRIPTIONIST,
        (
            *_crud("ris", "patient", "view"),
            *_crud("ris", "order", "view"),
            *_crud("reporting", "report", "view", "change"),
            "reporting.transcribe_report",
            *_crud("reporting", "dictation", "view"),
        ),
    ),
    # Referring physicians and patients hold no model-wide permission: what they see
    # comes from object permissions on their own orders and records.
    REFERRING_PHYSICIAN: Role(REFERRING_PHYSICIAN, ()),
    PATIENT: Role(PATIENT, ()),
    ADMINISTRATOR: Role(
        ADMINISTRATOR,
        (
            *_VIEW_CLINICAL,
            *_crud("core", "auditevent", "view"),
            # Registration and order entry, as the front desk (register, edit, merge, order).
            *_crud("ris", "patient", "add", "change"),
            *_crud("ris", "patientidentifier", "add", "change"),
            *_crud("ris", "order", "add"),
            *_crud("ris", "proceduretype", "add", "change", "delete"),
            *_crud("ris", "room", "add", "change", "delete"),
            *_crud("ris", "roomhours", "view", "add", "change", "delete"),
            "ris.schedule_order",  # book, move and cancel in the calendar
            *_crud("ris", "assigningauthority", "view", "add", "change"),
            *_crud("pacs", "study", "view"),
            *_crud("pacs", "dicomnode", "view", "add", "change", "delete"),
            *_crud("pacs", "storagecommitment", "view"),
            *_crud("pacs", "reconciliationitem", "view", "change"),
            *_crud("reporting", "report", "view"),
            # Reading: who reads what (reassign), turnaround, the report templates.
            *_crud("reporting", "readingclaim", "view"),
            "reporting.reassign_readingclaim",
            "reporting.view_turnaround",
            *_crud("reporting", "reporttemplate", "view", "add", "change", "delete"),
            *_crud("auth", "user", "view", "add", "change"),
            # The HL7 interface page: the message log, re-processing, the outbox.
            *_crud("hl7", "inboundmessage", "view"),
            "hl7.reprocess_inboundmessage",
            *_crud("hl7", "outboundmessage", "view"),
            "hl7.retry_outboundmessage",
            *_crud("hl7", "destination", "view", "add", "change"),
            # Billing: capture missing charges, adjust, post (DFT^P03), void, export; coverage.
            *_crud("billing", "charge", "view", "add", "change"),
            "billing.post_charge",
            "billing.void_charge",
            "billing.export_charge",
            *_crud("billing", "coverage", "view", "add", "change", "delete"),
        ),
    ),
}


def has_role(user: object, role: str) -> bool:
    """Tell whether USER is in the group named ROLE (superusers hold every role)."""
    if not getattr(user, "is_authenticated", False):
        return False
    if getattr(user, "is_superuser", False):
        return True
    names = getattr(user, "_role_names", None)
    if names is None:
        names = frozenset(user.groups.values_list("name", flat=True))  # type: ignore[attr-defined]
        user._role_names = names  # type: ignore[attr-defined]
    return role in names
