from __future__ import annotations

from django.contrib import admin

from reporting.models import Report


@admin.register(Report)
class ReportAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["id", "order", "status", "author", "signed_by", "signed_at", "updated_at"]
    list_filter = ["status"]
    search_fields = ["order__accession_number", "findings", "impression"]
    raw_id_fields = ["order", "study", "author", "signed_by"]
