"""Forms of the study browser: the search, and the deletion's confirmation."""

from __future__ import annotations

from django import forms

from core.forms import ModalityAndDatesForm
from pacs.selectors import StudySearch
from ris.models import ProcedureType

COMMON_MODALITIES = ("CT", "MR", "US", "CR", "DX", "MG", "PT", "NM", "XA", "RF", "ES", "XC")
_WILDCARD_HELP = "* and ? are wildcards"


class StudySearchForm(ModalityAndDatesForm):
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
