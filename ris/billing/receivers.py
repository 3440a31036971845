"""Billing listens to the RIS: a completed exam is charged, a cancelled one flagged.

Receivers run inside the transaction of the change (see ris.signals): the charge
commits or rolls back with the completion that caused it.
"""

from __future__ import annotations

from typing import Any

from django.dispatch import receiver

from ris.billing import services
from ris.models import Order, Patient
from ris.signals import order_status_changed, patients_merged


@receiver(order_status_changed, sender=Order, dispatch_uid="billing-capture-or-flag")
def capture_or_flag(
    sender: Any, order: Order, new_status: str, actor: Any = None, **kwargs: Any
) -> None:
    if new_status == Order.Status.COMPLETED:
        services.capture_charges(order, actor=actor)
    elif new_status == Order.Status.CANCELLED:
        services.flag_cancelled_order(order)


@receiver(patients_merged, sender=Patient, dispatch_uid="billing-follow-merge")
def follow_merge(sender: Any, survivor: Patient, merged: Patient, **kwargs: Any) -> None:
    services.move_to_survivor(survivor, merged)
