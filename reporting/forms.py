"""Forms of reporting: the worklist's filters, the editor, signing, addenda, reassigning."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.models import User

from core.forms import ModalityAndDatesForm
from reporting.selectors import WorklistFilter, radiologists
from reporting.services import ReportText

_TEXTAREA = forms.Textarea(attrs={"rows": 5})


class WorklistFilterForm(ModalityAndDatesForm):
    modality = forms.CharField(required=False, max_length=16, widget=forms.TextInput({"size": 6}))
    body_part = forms.CharField(required=False, max_length=64, label="Body part")
    referring = forms.CharField(required=False, max_length=64, label="Referring physician")
    date_from = forms.DateField(
        required=False, label="From", widget=forms.DateInput({"type": "date"})
    )
    date_to = forms.DateField(required=False, label="To", widget=forms.DateInput({"type": "date"}))

    def criteria(self) -> WorklistFilter:
        return WorklistFilter(**self.cleaned_data)


class ReportTextForm(forms.Form):
    """The report's sections; a section left out of the post is left as it is."""

    clinical_history = forms.CharField(required=False, widget=_TEXTAREA, label="Clinical history")
    technique = forms.CharField(required=False, widget=_TEXTAREA)
    findings = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 10}))
    impression = forms.CharField(required=False, widget=_TEXTAREA)
    recommendations = forms.CharField(required=False, widget=_TEXTAREA)

    def report_text(self) -> ReportText:
        given = {name: self.cleaned_data.get(name, "") for name in self.fields if name in self.data}
        return ReportText(**given)


class SignForm(forms.Form):
    password = forms.CharField(
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"})
    )
    final = forms.BooleanField(required=False)


class AddendumForm(forms.Form):
    text = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), label="Addendum")
    password = forms.CharField(
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"})
    )


class PasswordForm(forms.Form):
    password = forms.CharField(
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"})
    )


class ReassignForm(forms.Form):
    radiologist = forms.ModelChoiceField(queryset=User.objects.none())

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["radiologist"]
        assert isinstance(field, forms.ModelChoiceField)
        field.queryset = radiologists()


class DictationForm(forms.Form):
    audio = forms.FileField()
    duration = forms.FloatField(required=False, min_value=0)
