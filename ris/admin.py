from __future__ import annotations

from django.contrib import admin
from guardian.admin import GuardedModelAdmin

from ris.models import (
    AssigningAuthority,
    NumberSequence,
    Order,
    Patient,
    PatientIdentifier,
    ProcedureType,
    RequestedProcedure,
    Room,
    RoomHours,
    ScheduledProcedureStep,
)


class IdentifierInline(admin.TabularInline):  # type: ignore[type-arg]
    model = PatientIdentifier
    extra = 0
    autocomplete_fields = ["issuer"]


@admin.register(Patient)
class PatientAdmin(GuardedModelAdmin):
    list_display = ["display_name", "birth_date", "sex", "merged_into", "updated_at"]
    list_filter = ["sex"]
    search_fields = ["family_name", "given_name", "identifiers__value"]
    inlines = [IdentifierInline]
    raw_id_fields = ["user", "merged_into"]


@admin.register(AssigningAuthority)
class AssigningAuthorityAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["namespace_id", "universal_id", "universal_id_type", "description"]
    search_fields = ["namespace_id", "universal_id"]


@admin.register(PatientIdentifier)
class PatientIdentifierAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["value", "issuer", "type", "patient", "is_alias"]
    list_filter = ["issuer", "type", "is_alias"]
    search_fields = ["value"]
    raw_id_fields = ["patient"]


@admin.register(ProcedureType)
class ProcedureTypeAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = [
        "code",
        "name",
        "modality",
        "body_part",
        "cpt_code",
        "default_duration_minutes",
        "price",
        "active",
    ]
    list_filter = ["modality", "active"]
    search_fields = ["code", "name", "cpt_code"]


class RoomHoursInline(admin.TabularInline):  # type: ignore[type-arg]
    model = RoomHours
    extra = 0


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["name", "modality", "station_ae_title", "station_name", "location", "active"]
    list_filter = ["modality", "active"]
    inlines = [RoomHoursInline]


class StepInline(admin.TabularInline):  # type: ignore[type-arg]
    model = ScheduledProcedureStep
    extra = 0


class RequestedProcedureInline(admin.TabularInline):  # type: ignore[type-arg]
    model = RequestedProcedure
    extra = 0
    show_change_link = True


@admin.register(Order)
class OrderAdmin(GuardedModelAdmin):
    list_display = [
        "accession_number",
        "patient",
        "priority",
        "status",
        "referring_physician_name",
        "ordered_at",
    ]
    list_filter = ["status", "priority"]
    search_fields = ["accession_number", "placer_order_number", "patient__family_name"]
    raw_id_fields = ["patient", "referring_physician", "created_by"]
    inlines = [RequestedProcedureInline]


@admin.register(RequestedProcedure)
class RequestedProcedureAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = [
        "order",
        "requested_procedure_id",
        "procedure_type",
        "status",
        "study_instance_uid",
    ]
    list_filter = ["status"]
    search_fields = ["order__accession_number", "study_instance_uid"]
    raw_id_fields = ["order"]
    inlines = [StepInline]


@admin.register(ScheduledProcedureStep)
class ScheduledProcedureStepAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["sps_id", "modality", "station_ae_title", "room", "scheduled_start", "status"]
    list_filter = ["status", "modality", "room"]
    search_fields = ["sps_id", "requested_procedure__order__accession_number"]
    raw_id_fields = ["requested_procedure"]
    date_hierarchy = "scheduled_start"


@admin.register(NumberSequence)
class NumberSequenceAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["name", "last_value"]


@admin.register(RoomHours)
class RoomHoursAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["room", "weekday", "opens", "closes"]
    list_filter = ["room", "weekday"]
