"""The audit trail: the one place that writes AuditEvent rows.

Every view and change of patient data by a person, and every security event, goes
through `record`. Objects that belong to a patient say so with an `audit_patient()`
method, so this module needs no knowledge of the other apps' models.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from django.db import models
from django.http import HttpRequest

from core.models import AuditEvent

logger = logging.getLogger(__name__)

Action = AuditEvent.Action
Outcome = AuditEvent.Outcome
Channel = AuditEvent.Channel


class PatientOwned(Protocol):
    def audit_patient(self) -> models.Model | None: ...


def client_address(request: HttpRequest) -> str:
    """Return the peer address of REQUEST (the proxy's own, unless trusted to forward)."""
    return str(request.META.get("REMOTE_ADDR", ""))


def _object_fields(target: models.Model | None) -> dict[str, str]:
    if target is None:
        return {}
    fields = {
        "object_type": target._meta.label_lower,
        "object_id": str(target.pk or ""),
        "object_repr": str(target)[:255],
    }
    patient = target if target._meta.label_lower == "ris.patient" else None
    if patient is None and hasattr(target, "audit_patient"):
        patient = target.audit_patient()
    if patient is not None:
        fields["patient_key"] = str(patient.pk)
        fields["patient_repr"] = str(patient)[:255]
    return fields


def record(
    action: str,
    target: models.Model | None = None,
    *,
    request: HttpRequest | None = None,
    actor: Any = None,
    actor_name: str = "",
    channel: str | None = None,
    source_address: str = "",
    outcome: str = Outcome.SUCCESS,
    detail: str = "",
    object_type: str = "",
    object_id: str = "",
) -> AuditEvent:
    """Write one audit event; a request supplies the actor, channel and address."""
    if request is not None:
        # A DRF Request wraps the HttpRequest; reading its .user would authenticate again.
        request = getattr(request, "_request", request)
        user = getattr(request, "user", None)
        if actor is None and user is not None and user.is_authenticated:
            actor = user
        source_address = source_address or client_address(request)
        if channel is None:
            channel = Channel.API if request.path.startswith("/api/") else Channel.WEB  # type: ignore[union-attr]
    if actor is not None and not actor_name:
        actor_name = actor.get_username()
    fields = _object_fields(target)
    if object_type:
        fields["object_type"] = object_type
    if object_id:
        fields["object_id"] = object_id
    event = AuditEvent.objects.create(
        action=action,
        actor=actor,
        actor_name=actor_name[:150],
        channel=channel or Channel.SYSTEM,
        source_address=source_address[:255],
        outcome=outcome,
        detail=detail,
        **fields,
    )
    logger.debug("audit: %s", event)
    return event


def record_query(
    request: HttpRequest, object_type: str, *, count: int, criteria: str = ""
) -> AuditEvent:
    """Record that a person listed COUNT objects of OBJECT_TYPE matching CRITERIA."""
    return record(
        Action.QUERY,
        request=request,
        object_type=object_type,
        detail=f"{count} result(s); {criteria}".rstrip("; "),
    )
