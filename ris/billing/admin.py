from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from core.audit import client_address
from ris.billing import services
from ris.billing.models import Charge, Coverage


@admin.register(Charge)
class ChargeAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Charges are changed on the billing page (post, void, adjust); here they are read."""

    list_display = [
        "id",
        "order",
        "patient",
        "procedure_code",
        "description",
        "quantity",
        "amount",
        "currency",
        "status",
        "performed_at",
    ]
    list_filter = ["status", "modality"]
    search_fields = ["order__accession_number", "procedure_code", "description"]
    raw_id_fields = ["order", "requested_procedure", "patient", "posted_message", "void_message"]
    list_select_related = ["order", "patient"]
    actions = ["capture_missing"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Capture the charges of completed exams that have none")
    def capture_missing(self, request: HttpRequest, queryset: QuerySet[Charge]) -> None:
        if not request.user.has_perm("billing.add_charge"):
            self.message_user(request, "You may not capture charges.", messages.ERROR)
            return
        created = services.capture_missing_charges(
            actor=request.user,  # type: ignore[arg-type]
            channel="web",
            source_address=client_address(request),
        )
        self.message_user(request, f"{len(created)} charge(s) captured.", messages.SUCCESS)


@admin.register(Coverage)
class CoverageAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Coverage is edited on the patient's billing page, where every change is audited."""

    list_display = ["patient", "priority", "payer_name", "policy_number", "valid_from", "valid_to"]
    list_filter = ["priority"]
    search_fields = ["payer_name", "policy_number", "patient__family_name"]
    raw_id_fields = ["patient"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
