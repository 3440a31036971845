from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from ris.hl7.models import Destination, InboundMessage, OutboundMessage


@admin.register(Destination)
class DestinationAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = [
        "name",
        "host",
        "port",
        "message_types",
        "enabled",
        "receiving_application",
        "receiving_facility",
        "character_set",
    ]
    list_filter = ["enabled"]
    search_fields = ["name", "host", "receiving_application"]
    readonly_fields = ["lease_owner", "lease_until", "created_at", "updated_at"]


class MessageLogAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """The message log is a record: read here, re-processed or retried on the HL7 page."""

    raw_id_fields = ["patient"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(InboundMessage)
class InboundMessageAdmin(MessageLogAdmin):
    list_display = [
        "received_at",
        "message_type",
        "control_id",
        "sending_application",
        "status",
        "patient_name",
        "error_location",
    ]
    list_filter = ["status", "message_type", "sending_application"]
    search_fields = ["control_id", "patient_name", "patient_identifiers", "order_numbers"]
    date_hierarchy = "received_at"


@admin.register(OutboundMessage)
class OutboundMessageAdmin(MessageLogAdmin):
    list_display = [
        "created_at",
        "destination",
        "message_type",
        "control_id",
        "status",
        "attempts",
        "next_attempt_at",
        "patient_name",
    ]
    list_filter = ["status", "message_type", "destination"]
    search_fields = ["control_id", "patient_name", "patient_identifiers", "order_numbers"]
    date_hierarchy = "created_at"
