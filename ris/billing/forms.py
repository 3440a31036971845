from __future__ import annotations

from django import forms

from ris.billing import selectors
from ris.billing.models import Charge, Coverage


class ChargeFilterForm(forms.Form):
    status = forms.ChoiceField(
        required=False, choices=[("", "any"), *Charge.Status.choices], label="Status"
    )
    date_from = forms.DateField(
        required=False, label="Performed from", widget=forms.DateInput(attrs={"type": "date"})
    )
    date_to = forms.DateField(
        required=False, label="to", widget=forms.DateInput(attrs={"type": "date"})
    )
    procedure = forms.CharField(
        required=False, max_length=64, label="Procedure (code, CPT or name)"
    )
    flag = forms.ChoiceField(
        required=False,
        choices=[("", "any"), *selectors.FLAGS.items()],
        label="Review flag",
    )

    def clean(self) -> dict[str, object]:
        data = super().clean() or {}
        start, end = data.get("date_from"), data.get("date_to")
        if start and end and end < start:
            raise forms.ValidationError("The end date is before the start date.")
        return data

    def criteria(self) -> selectors.ChargeFilter:
        if not self.is_bound or not self.is_valid():
            return selectors.ChargeFilter(status=Charge.Status.PENDING)
        data = self.cleaned_data
        return selectors.ChargeFilter(
            status=data.get("status") or "",
            date_from=data.get("date_from"),
            date_to=data.get("date_to"),
            procedure=data.get("procedure") or "",
            flag=data.get("flag") or "",
        )


class VoidForm(forms.Form):
    reason = forms.CharField(
        max_length=500, widget=forms.Textarea(attrs={"rows": 2}), label="Reason for voiding"
    )


class AdjustForm(forms.Form):
    quantity = forms.IntegerField(min_value=1, max_value=99)
    modifiers = forms.CharField(required=False, max_length=32, label="Modifiers (e.g. 26,TC)")


class CoverageForm(forms.ModelForm):  # type: ignore[type-arg]
    class Meta:
        model = Coverage
        fields = [
            "priority",
            "payer_name",
            "plan_name",
            "policy_number",
            "group_number",
            "subscriber_name",
            "subscriber_relationship",
            "valid_from",
            "valid_to",
        ]
        widgets = {
            "valid_from": forms.DateInput(attrs={"type": "date"}),
            "valid_to": forms.DateInput(attrs={"type": "date"}),
        }
