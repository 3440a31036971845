"""Forms of the study browser: the search, and the deletion's confirmation."""

from __future__ import annotations

import re
from typing import Any

from django import forms

from pacs.selectors import StudySearch
from ris.models import ProcedureType

# Modality (0008,0060) is CS: upper-case letters, digits, space and underscore (PS3.5 6.2).
_MODALITY = re.compile(r"^[A-Z0-9_ ]{1,16}$")
COMMON_MODALITIES = ("CT", "MR", "US", "CR", "DX", "MG", "PT", "NM", "XA", "RF", "ES", "XC")
_WILDCARD_HELP = "* and ? are wildcards"


class StudySearchForm(forms.Form):
    patient_name = forms.CharField(
        required=False, max_length=64, label="Patient name", help_text=_WILDCARD_HELP
    )
    patient_id = forms.CharField(required=False, max_length=64, label="Patient ID")
    accession_number = forms.CharField(required=False, max_length=16, label="Accession")
    date_from = forms.DateField(
        required=False, label="From", widget=forms.DateInput(attrs={"type": "date"})
    )
    date_to = forms.DateField(
        required=False, label="To", widget=forms.DateInput(attrs={"type": "date"})
    )
    modality = forms.CharField(
        required=False,
        max_length=16,
        widget=forms.TextInput(attrs={"list": "modalities", "size": 6}),
    )
    referring_physician = forms.CharField(
        required=False, max_length=64, label="Referring physician", help_text=_WILDCARD_HELP
    )

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

    def criteria(self) -> StudySearch:
        return StudySearch(**self.cleaned_data)


class StudyDeleteForm(forms.Form):
    reason = forms.CharField(
        required=False, max_length=200, label="Reason (kept in the audit trail)"
    )


# The reconciliation queue's actions.


class LinkOrderForm(forms.Form):
    accession_number = forms.CharField(max_length=16, label="Accession number of the order")

    def clean_accession_number(self) -> str:
        return str(self.cleaned_data["accession_number"]).strip()


class AssignPatientForm(forms.Form):
    patient_id = forms.CharField(max_length=64, label="Patient ID")
    issuer = forms.CharField(max_length=64, label="Issuer")


class UnscheduledForm(forms.Form):
    procedure_type = forms.ModelChoiceField(
        queryset=ProcedureType.objects.filter(active=True).order_by("code"),
        label="Procedure performed",
    )


class RejectForm(forms.Form):
    reason = forms.CharField(max_length=200, label="Reason (kept in the audit trail)")
