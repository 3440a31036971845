from __future__ import annotations

from django.contrib import admin

from reporting.models import Addendum, Dictation, ReadingClaim, Report, ReportTemplate


@admin.register(Report)
class ReportAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["id", "order", "status", "author", "signed_by", "signed_at", "updated_at"]
    list_filter = ["status", "transcription", "critical"]
    search_fields = ["order__accession_number", "findings", "impression"]
    raw_id_fields = [
        "order",
        "study",
        "author",
        "signed_by",
        "template",
        "transcribed_by",
        "critical_flagged_by",
        "critical_acknowledged_by",
    ]


@admin.register(ReportTemplate)
class ReportTemplateAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["name", "procedure_type", "modality", "body_part", "active"]
    list_filter = ["active", "modality"]
    search_fields = ["name", "procedure_type__code", "procedure_type__name"]
    raw_id_fields = ["procedure_type"]


@admin.register(Addendum)
class AddendumAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["id", "report", "author", "signed_by", "signed_at"]
    raw_id_fields = ["report", "author", "signed_by"]


@admin.register(Dictation)
class DictationAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["id", "report", "content_type", "size", "uploaded_by", "uploaded_at"]
    raw_id_fields = ["report", "uploaded_by"]


@admin.register(ReadingClaim)
class ReadingClaimAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = [
        "id",
        "study",
        "radiologist",
        "claimed_at",
        "expires_at",
        "released_at",
        "ended",
    ]
    list_filter = ["ended"]
    raw_id_fields = ["study", "radiologist"]
