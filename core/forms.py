from __future__ import annotations

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
