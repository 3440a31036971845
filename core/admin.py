from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from core.models import AuditEvent, WorkerHeartbeat


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Read-only: the trail is written by core.audit alone."""

    list_display = [
        "occurred_at",
        "actor_name",
        "channel",
        "action",
        "outcome",
        "object_type",
        "object_repr",
        "patient_repr",
        "source_address",
    ]
    list_filter = ["action", "outcome", "channel", "object_type"]
    search_fields = ["actor_name", "object_id", "object_repr", "patient_key", "patient_repr"]
    date_hierarchy = "occurred_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["hostname", "seen_at"]
