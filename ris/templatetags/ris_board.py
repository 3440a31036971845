"""Template helpers of the boards: steps grouped by room, an exam's furthest status, the
order timeline."""

from __future__ import annotations

from typing import Any

from django import template

from core import selectors as core_selectors
from core.models import AuditEvent
from ris.models import Order, RequestedProcedure, ScheduledProcedureStep

register = template.Library()

# Past "completed", the requested procedure tells how far the exam has come.
_AFTER_COMPLETION: dict[str, str] = {
    RequestedProcedure.Status.IMAGES_RECEIVED.value: "images_received",
    RequestedProcedure.Status.PRELIMINARY_REPORT.value: "read",
    RequestedProcedure.Status.REPORTED.value: "reported",
}
_LABELS = {"images_received": "Images received", "read": "Read", "reported": "Reported"}


@register.filter
def by_room(steps: list[ScheduledProcedureStep]) -> list[tuple[Any, list[ScheduledProcedureStep]]]:
    """Group STEPS by room (rooms by name, steps without a room last), keeping time order."""
    groups: dict[Any, list[ScheduledProcedureStep]] = {}
    for step in steps:
        groups.setdefault(step.room, []).append(step)
    return sorted(groups.items(), key=lambda item: (item[0] is None, str(item[0] or "")))


def _stage(step: ScheduledProcedureStep) -> str:
    procedure_status = str(step.requested_procedure.status)
    if step.status == ScheduledProcedureStep.Status.COMPLETED:
        return _AFTER_COMPLETION.get(procedure_status, str(step.status))
    # Images may come in before the modality reports MPPS COMPLETED.
    if procedure_status in _AFTER_COMPLETION and step.status == "in_progress":
        return _AFTER_COMPLETION[procedure_status]
    return str(step.status)


@register.filter
def exam_stage(step: ScheduledProcedureStep) -> str:
    """The furthest stage of STEP's exam: a step status, or images received, read, reported."""
    return _stage(step)


@register.filter
def exam_stage_label(step: ScheduledProcedureStep) -> str:
    stage = _stage(step)
    return _LABELS.get(stage) or ScheduledProcedureStep.Status(stage).label


@register.simple_tag
def order_timeline(order: Order) -> list[AuditEvent]:
    """The status changes of ORDER from the audit trail, oldest first."""
    return list(core_selectors.object_timeline(order._meta.label_lower, order.pk))
