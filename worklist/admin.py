from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from worklist.models import PerformedProcedureStep


@admin.register(PerformedProcedureStep)
class PerformedProcedureStepAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """What the modalities reported: read-only, since it is the modality's own record."""

    list_display = [
        "performed_procedure_step_id",
        "status",
        "modality",
        "performed_station_ae_title",
        "accession_number",
        "started_at",
        "ended_at",
        "needs_reconciliation",
    ]
    list_filter = ["status", "modality", "needs_reconciliation"]
    search_fields = [
        "sop_instance_uid",
        "performed_procedure_step_id",
        "accession_number",
        "study_instance_uid",
        "patient_id",
    ]
    raw_id_fields = ["scheduled_steps"]
    date_hierarchy = "started_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
