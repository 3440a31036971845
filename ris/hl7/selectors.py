"""Reads of the HL7 interface: the message log with its filters, the outbox by destination."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, Q, QuerySet

from ris.hl7.models import Destination, InboundMessage, OutboundMessage


@dataclass(frozen=True)
class MessageFilter:
    patient: str = ""  # a name, an identifier, an order number, or a patient number
    message_type: str = ""  # "ADT" or "ADT^A04"
    status: str = ""


def _search(queryset: QuerySet, criteria: MessageFilter) -> QuerySet:  # type: ignore[type-arg]
    text = criteria.patient.strip()
    if text:
        match = (
            Q(patient_name__icontains=text)
            | Q(patient_identifiers__icontains=text)
            | Q(order_numbers__icontains=text)
            | Q(patient__family_name__iexact=text)
        )
        if text.isdigit():
            match |= Q(patient_id=int(text))
        queryset = queryset.filter(match)
    if criteria.message_type:
        queryset = queryset.filter(message_type__istartswith=criteria.message_type.strip())
    if criteria.status:
        queryset = queryset.filter(status=criteria.status)
    return queryset


def inbound_messages(criteria: MessageFilter) -> QuerySet[InboundMessage]:
    messages = InboundMessage.objects.select_related("patient").defer("raw", "ack")
    return _search(messages, criteria).order_by("-received_at", "-id")


def outbound_messages(criteria: MessageFilter) -> QuerySet[OutboundMessage]:
    messages = OutboundMessage.objects.select_related("patient", "destination").defer("raw", "ack")
    return _search(messages, criteria).order_by("-id")


def destinations_with_backlog() -> QuerySet[Destination]:
    """Every destination with how many messages wait for it."""
    waiting = ~Q(messages__status=OutboundMessage.Status.DELIVERED)
    return Destination.objects.annotate(
        waiting=Count("messages", filter=waiting),
        retrying=Count("messages", filter=Q(messages__status=OutboundMessage.Status.RETRYING)),
    ).order_by("name")


def queue_head(message: OutboundMessage) -> OutboundMessage | None:
    """Return the undelivered message of MESSAGE's destination that is sent next."""
    return (
        OutboundMessage.objects.filter(destination_id=message.destination_id)
        .exclude(status=OutboundMessage.Status.DELIVERED)
        .order_by("id")
        .only("id", "control_id")
        .first()
    )
