from __future__ import annotations

from django import forms

from ris.hl7.models import InboundMessage, OutboundMessage
from ris.hl7.selectors import MessageFilter

DIRECTIONS = [("in", "Received"), ("out", "Sent (outbox)")]


class MessageFilterForm(forms.Form):
    direction = forms.ChoiceField(choices=DIRECTIONS, required=False)
    patient = forms.CharField(
        required=False, max_length=100, label="Patient (name, identifier, order, number)"
    )
    message_type = forms.CharField(required=False, max_length=32, label="Type (e.g. ADT^A04)")
    status = forms.ChoiceField(
        required=False,
        choices=[
            ("", "any"),
            *InboundMessage.Status.choices,
            *OutboundMessage.Status.choices,
        ],
    )

    def criteria(self) -> MessageFilter:
        data = self.cleaned_data
        return MessageFilter(
            patient=data.get("patient", ""),
            message_type=data.get("message_type", ""),
            status=data.get("status", ""),
        )

    @property
    def direction_value(self) -> str:
        if self.is_bound and self.is_valid():
            return self.cleaned_data.get("direction") or "in"
        return "in"
