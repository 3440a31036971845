from __future__ import annotations

from django.contrib import admin

from pacs.models import Instance, Series, Study


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
