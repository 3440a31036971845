"""REST API of the RIS, read-only for now: patients and orders a user may see."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from core import audit
from ris import selectors
from ris.models import Order, Patient, PatientIdentifier


class IdentifierSerializer(serializers.ModelSerializer[PatientIdentifier]):
    issuer = serializers.CharField(source="issuer.namespace_id")

    class Meta:
        model = PatientIdentifier
        fields = ["value", "issuer", "type"]


class PatientSerializer(serializers.ModelSerializer[Patient]):
    identifiers = IdentifierSerializer(many=True, read_only=True)

    class Meta:
        model = Patient
        fields = [
            "id",
            "family_name",
            "given_name",
            "middle_name",
            "birth_date",
            "sex",
            "identifiers",
        ]


class OrderSerializer(serializers.ModelSerializer[Order]):
    patient = serializers.PrimaryKeyRelatedField(read_only=True)

    class Meta:
        model = Order
        fields = [
            "id",
            "accession_number",
            "placer_order_number",
            "patient",
            "referring_physician_name",
            "priority",
            "reason",
            "status",
            "ordered_at",
        ]


class _AuditedReadOnly(viewsets.ReadOnlyModelViewSet):  # type: ignore[type-arg]
    object_grants = True  # referring physicians and patients read through their grants

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        response = super().list(request, *args, **kwargs)
        count = (
            response.data.get("count", 0) if isinstance(response.data, dict) else len(response.data)
        )
        audit.record_query(
            request, self.queryset_label, count=count, criteria=request.GET.urlencode()
        )
        return response

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        instance = self.get_object()
        audit.record(audit.Action.VIEW, instance, request=request)
        return Response(self.get_serializer(instance).data)


class PatientViewSet(_AuditedReadOnly):
    serializer_class = PatientSerializer
    queryset_label = "ris.patient"

    def get_queryset(self) -> Any:
        return selectors.patients_visible_to(self.request.user, self.request.GET.get("q", ""))


class OrderViewSet(_AuditedReadOnly):
    serializer_class = OrderSerializer
    queryset_label = "ris.order"

    def get_queryset(self) -> Any:
        return selectors.orders_visible_to(self.request.user)
