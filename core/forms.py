from __future__ import annotations

import re
from typing import Any

from django import forms

from core.models import AuditEvent
from core.selectors import AuditFilter


class AuditFilterForm(forms.Form):
    actor = forms.CharField(required=False, label="User or AE title")
    action = forms.ChoiceField(required=False, choices=[("", "any"), *AuditEvent.Action.choices])
    outcome = forms.ChoiceField(required=False, choices=[("", "any"), *AuditEvent.Outcome.choices])
    channel = forms.ChoiceField(required=False, choices=[("", "any"), *AuditEvent.Channel.choices])
    object_type = forms.CharField(required=False, label="Object type (e.g. ris.order)")
    patient_key = forms.CharField(required=False, label="Patient number")
    date_from = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def criteria(self) -> AuditFilter:
        return AuditFilter(**self.cleaned_data)


# Modality (0008,0060) is CS: upper-case letters, digits, space and underscore (PS3.5 6.2).
_MODALITY = re.compile(r"^[A-Z0-9_ ]{1,16}$")


class ModalityAndDatesForm(forms.Form):
    """A search form's checks of a modality field and a date_from/date_to range."""

    def clean_modality(self) -> str:
        value = str(self.cleaned_data.get("modality") or "").strip().upper()
        if value and not _MODALITY.match(value):
            raise forms.ValidationError("A modality is a code such as CT or MR.")
        return value

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start, end = data.get("date_from"), data.get("date_to")
        if start and end and start > end:
            raise forms.ValidationError("The date range ends before it starts.")
        return data
