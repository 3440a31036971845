from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from pacs import commitment
from pacs.models import (
    DicomNode,
    HeaderRewrite,
    Instance,
    ReconciliationItem,
    Series,
    StorageCommitment,
    Study,
)


@admin.register(Study)
class StudyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = [
        "study_instance_uid",
        "patient_name",
        "dicom_patient_id",
        "study_date",
        "accession_number",
        "modalities_in_study",
        "number_of_series",
        "number_of_instances",
    ]
    search_fields = ["study_instance_uid", "patient_name", "dicom_patient_id", "accession_number"]
    raw_id_fields = ["patient", "requested_procedure"]
    date_hierarchy = "study_date"


@admin.register(Series)
class SeriesAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = [
        "series_instance_uid",
        "modality",
        "series_number",
        "series_description",
        "number_of_instances",
    ]
    list_filter = ["modality"]
    search_fields = ["series_instance_uid"]
    raw_id_fields = ["study"]


@admin.register(Instance)
class InstanceAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = [
        "sop_instance_uid",
        "sop_class_uid",
        "instance_number",
        "transfer_syntax_uid",
        "file_size",
    ]
    search_fields = ["sop_instance_uid"]
    raw_id_fields = ["series"]


@admin.register(StorageCommitment)
class StorageCommitmentAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Storage Commitment requests and their results: read-only, but a result can be resent."""

    list_display = [
        "transaction_uid",
        "calling_ae_title",
        "received_at",
        "instance_count",
        "status",
        "event_type_id",
        "failure_count",
        "attempts",
        "sent_at",
    ]
    list_filter = ["status", "calling_ae_title"]
    search_fields = ["transaction_uid", "calling_ae_title"]
    date_hierarchy = "received_at"
    readonly_fields = [field.name for field in StorageCommitment._meta.fields]
    actions = ["send_again"]

    @admin.display(description="instances")
    def instance_count(self, record: StorageCommitment) -> int:
        return len(record.references)

    @admin.display(description="failed")
    def failure_count(self, record: StorageCommitment) -> int:
        return len(record.failures)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Send the result again now (those not sent)", permissions=["change"])
    def send_again(self, request: HttpRequest, queryset: QuerySet[StorageCommitment]) -> None:
        count = commitment.retry_now(list(queryset.values_list("pk", flat=True)))
        self.message_user(request, f"{count} result(s) queued to be sent again.")


@admin.register(DicomNode)
class DicomNodeAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = [
        "ae_title",
        "host",
        "port",
        "may_store",
        "may_query",
        "may_retrieve",
        "description",
    ]
    list_filter = ["may_store", "may_query", "may_retrieve"]
    search_fields = ["ae_title", "host", "description"]


@admin.register(ReconciliationItem)
class ReconciliationItemAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Read-mostly: resolving goes through the reconciliation page (it rewrites headers)."""

    list_display = ["study", "reason", "status", "resolution", "created_at", "resolved_by"]
    list_filter = ["status", "reason"]
    raw_id_fields = ["study", "requested_procedure", "resolved_by"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(HeaderRewrite)
class HeaderRewriteAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["study", "reason", "due_at", "requested_at"]
    raw_id_fields = ["study"]
