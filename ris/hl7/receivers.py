"""The HL7 interface listens to the RIS: changes become outbound messages in the outbox.

Receivers run inside the transaction of the change (see ris.signals), so the outbox row
commits or rolls back with it.
"""

from __future__ import annotations

from typing import Any

from django.dispatch import receiver

from ris.hl7 import builders, outbox
from ris.models import Order, Patient, PatientIdentifier
from ris.signals import order_status_changed, patient_updated, patients_merged

# Order status -> HL7 table 0038 (ORC-5) as the placer hears it.
ORDER_STATUS_CODES = {
    Order.Status.SCHEDULED: builders.ORDER_SCHEDULED,
    Order.Status.ARRIVED: builders.ORDER_SCHEDULED,
    Order.Status.IN_PROGRESS: builders.ORDER_IN_PROCESS,
    Order.Status.COMPLETED: builders.ORDER_COMPLETED,
    Order.Status.CANCELLED: builders.ORDER_CANCELLED,
}
# Statuses the placer is told about: the exam starting, ending, or being called off.
REPORTED_STATUSES = (Order.Status.IN_PROGRESS, Order.Status.COMPLETED, Order.Status.CANCELLED)


@receiver(patient_updated, sender=Patient, dispatch_uid="hl7-adt-a08-out")
def send_patient_update(sender: Any, patient: Patient, **kwargs: Any) -> None:
    outbox.enqueue_patient_update(patient)


@receiver(patients_merged, sender=Patient, dispatch_uid="hl7-adt-a40-out")
def send_patient_merge(
    sender: Any, survivor: Patient, merged_identifiers: list[PatientIdentifier], **kwargs: Any
) -> None:
    outbox.enqueue_patient_merge(survivor, merged_identifiers)


@receiver(order_status_changed, sender=Order, dispatch_uid="hl7-orm-status-out")
def send_order_status(sender: Any, order: Order, new_status: str, **kwargs: Any) -> None:
    if new_status in REPORTED_STATUSES:
        outbox.enqueue_order_status(order, ORDER_STATUS_CODES[Order.Status(new_status)])
