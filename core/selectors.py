"""Reads of core: the audit trail with its filters."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import QuerySet
from django.utils import timezone

from core.models import AuditEvent


@dataclass(frozen=True)
class AuditFilter:
    actor: str = ""
    action: str = ""
    outcome: str = ""
    channel: str = ""
    object_type: str = ""
    patient_key: str = ""
    date_from: dt.date | None = None
    date_to: dt.date | None = None


def audit_events(criteria: AuditFilter) -> QuerySet[AuditEvent]:
    events = AuditEvent.objects.all()
    if criteria.actor:
        events = events.filter(actor_name__iexact=criteria.actor)
    for name in ("action", "outcome", "channel", "object_type", "patient_key"):
        value = getattr(criteria, name)
        if value:
            events = events.filter(**{name: value})
    if criteria.date_from:
        start = timezone.make_aware(dt.datetime.combine(criteria.date_from, dt.time.min))
        events = events.filter(occurred_at__gte=start)
    if criteria.date_to:
        end = timezone.make_aware(
            dt.datetime.combine(criteria.date_to, dt.time.min)
        ) + dt.timedelta(days=1)
        events = events.filter(occurred_at__lt=end)
    return events.order_by("-occurred_at", "-id")


# What a timeline shows: the object made, and every change to it.
TIMELINE_ACTIONS = (AuditEvent.Action.CREATE, AuditEvent.Action.UPDATE)


def object_timeline(object_type: str, object_id: object) -> QuerySet[AuditEvent]:
    """The creation and changes of one object (OBJECT_TYPE, e.g. "ris.order"), oldest first."""
    return AuditEvent.objects.filter(
        object_type=object_type,
        object_id=str(object_id),
        action__in=TIMELINE_ACTIONS,
        outcome=AuditEvent.Outcome.SUCCESS,
    ).order_by("occurred_at", "id")
