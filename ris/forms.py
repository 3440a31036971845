"""Forms of the front desk: register and edit a patient, merge two, enter an order."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django import forms
from django.contrib.auth.models import User
from django.utils import timezone

from core import roles
from ris.models import AssigningAuthority, PatientIdentifier, Priority, ProcedureType, Sex
from ris.services import BookingInput, IdentifierInput, PatientInput

# Identifier rows offered on the registration page (empty ones are ignored).
IDENTIFIER_ROWS = 3
# An order entered without a time is booked at the department's opening, local time; the
# scheduling calendar then moves it into a room's free slot.
DEFAULT_REQUESTED_TIME = dt.time(8, 0)
# An order for today whose default time has passed starts at the next quarter of an hour.
ROUND_MINUTES = 15

_DATE = {"type": "date"}


class PatientForm(forms.Form):
    """The demographics the front desk types, for registration and for editing."""

    family_name = forms.CharField(max_length=64, label="Family name")
    given_name = forms.CharField(max_length=64, required=False, label="Given name")
    middle_name = forms.CharField(max_length=64, required=False, label="Middle name")
    birth_date = forms.DateField(required=False, label="Birth date", widget=forms.DateInput(_DATE))
    sex = forms.ChoiceField(choices=Sex.choices, initial=Sex.UNKNOWN)
    phone = forms.CharField(max_length=32, required=False)
    email = forms.EmailField(required=False)
    address = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))

    def clean_family_name(self) -> str:
        value = str(self.cleaned_data["family_name"]).strip()
        if not value:
            raise forms.ValidationError("A family name is required.")
        return value

    def clean_birth_date(self) -> dt.date | None:
        value: dt.date | None = self.cleaned_data.get("birth_date")
        if value is not None and value > timezone.localdate():
            raise forms.ValidationError("The birth date is in the future.")
        return value

    def changes(self) -> dict[str, Any]:
        """The cleaned demographics as update_patient takes them."""
        return {
            name: (value.strip() if isinstance(value, str) else value)
            for name, value in self.cleaned_data.items()
        }


class IdentifierForm(forms.Form):
    value = forms.CharField(max_length=64, required=False, label="Identifier")
    issuer = forms.ModelChoiceField(
        queryset=AssigningAuthority.objects.order_by("namespace_id"),
        to_field_name="namespace_id",
        required=False,
        empty_label="issuer…",
    )
    type = forms.ChoiceField(
        choices=PatientIdentifier.Type.choices, initial=PatientIdentifier.Type.MEDICAL_RECORD
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        value = str(data.get("value") or "").strip()
        data["value"] = value
        if value and data.get("issuer") is None:
            self.add_error("issuer", "Choose who issued this identifier.")
        if data.get("issuer") is not None and not value:
            self.add_error("value", "Type the identifier, or clear its issuer.")
        return data

    def identifier(self) -> IdentifierInput | None:
        """The row as the service takes it, or None for an empty row."""
        value, issuer = self.cleaned_data.get("value"), self.cleaned_data.get("issuer")
        if not value or issuer is None:
            return None
        return IdentifierInput(
            value=value, issuer=issuer.namespace_id, type=self.cleaned_data["type"]
        )


class BaseIdentifierFormSet(forms.BaseFormSet):  # type: ignore[type-arg]
    def clean(self) -> None:
        super().clean()
        if any(self.errors):
            return
        seen: set[tuple[str, str]] = set()
        for identifier in self.identifiers():
            key = (identifier.issuer, identifier.value)
            if key in seen:
                raise forms.ValidationError(f"{identifier.value} ({identifier.issuer}) is twice.")
            seen.add(key)
        if not seen:
            raise forms.ValidationError("Give at least one identifier and its issuer.")

    def identifiers(self) -> list[IdentifierInput]:
        rows = (form.identifier() for form in self.forms if form.is_valid())
        return [row for row in rows if row is not None]


IdentifierFormSet = forms.formset_factory(
    IdentifierForm, formset=BaseIdentifierFormSet, extra=IDENTIFIER_ROWS, max_num=IDENTIFIER_ROWS
)


def patient_input(form: PatientForm, identifiers: list[IdentifierInput]) -> PatientInput:
    """Build the service's input from a valid registration form and its identifiers."""
    data = form.changes()
    return PatientInput(
        family_name=data["family_name"],
        given_name=data["given_name"],
        middle_name=data["middle_name"],
        birth_date=data["birth_date"],
        sex=data["sex"],
        phone=data["phone"],
        email=data["email"],
        address=data["address"],
        identifiers=identifiers,
    )


class MergeForm(forms.Form):
    """Which of the two records survives; the other is merged into it."""

    survivor = forms.IntegerField(widget=forms.HiddenInput)
    merged = forms.IntegerField(widget=forms.HiddenInput)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("survivor") is not None and data.get("survivor") == data.get("merged"):
            raise forms.ValidationError("A patient cannot be merged into itself.")
        return data


def _physician_label(user: User) -> str:
    return user.get_full_name() or user.get_username()


class PhysicianChoiceField(forms.ModelChoiceField):  # type: ignore[type-arg]
    def label_from_instance(self, obj: Any) -> str:
        return _physician_label(obj)


class OrderForm(forms.Form):
    """Order entry: a procedure from the catalogue, who asks, how urgent, why and when."""

    procedure = forms.ModelChoiceField(
        queryset=ProcedureType.objects.filter(active=True),
        error_messages={"required": "Choose a procedure from the catalogue."},
    )
    referring_physician = PhysicianChoiceField(
        queryset=User.objects.filter(groups__name=roles.REFERRING_PHYSICIAN, is_active=True)
        .order_by("last_name", "first_name", "username")
        .distinct(),
        required=False,
        label="Referring physician (with an account)",
        empty_label="—",
    )
    referring_physician_name = forms.CharField(
        max_length=192, required=False, label="or the referring physician's name"
    )
    priority = forms.ChoiceField(choices=Priority.choices, initial=Priority.ROUTINE)
    reason = forms.CharField(
        label="Clinical indication", widget=forms.Textarea(attrs={"rows": 3}), max_length=2000
    )
    requested_date = forms.DateField(label="Requested date", widget=forms.DateInput(_DATE))
    requested_time = forms.TimeField(
        required=False,
        label="Time (optional)",
        widget=forms.TimeInput(attrs={"type": "time"}),
    )

    def clean_requested_date(self) -> dt.date:
        value: dt.date = self.cleaned_data["requested_date"]
        if value < timezone.localdate():
            raise forms.ValidationError("The requested date is in the past.")
        return value

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        physician = data.get("referring_physician")
        if physician is None and not str(data.get("referring_physician_name") or "").strip():
            self.add_error("referring_physician_name", "Name the referring physician.")
        return data

    def scheduled_start(self) -> dt.datetime:
        """The requested date and time as an aware datetime, never in the past."""
        day: dt.date = self.cleaned_data["requested_date"]
        time: dt.time = self.cleaned_data.get("requested_time") or DEFAULT_REQUESTED_TIME
        start = timezone.make_aware(dt.datetime.combine(day, time))
        now = timezone.now()
        if start < now:
            start = now.replace(second=0, microsecond=0) + dt.timedelta(
                minutes=ROUND_MINUTES - now.minute % ROUND_MINUTES
            )
        return start

    def booking(self, patient: Any) -> BookingInput:
        """The service's input for PATIENT: no room yet (the scheduling calendar gives one)."""
        data = self.cleaned_data
        physician: User | None = data.get("referring_physician")
        name = str(data.get("referring_physician_name") or "").strip()
        if not name and physician is not None:
            # DICOM PN: Family^Given (PS3.5 6.2.1).
            name = "^".join(p for p in (physician.last_name, physician.first_name) if p)
            name = name or physician.get_username()
        return BookingInput(
            patient=patient,
            procedure_type=data["procedure"],
            scheduled_start=self.scheduled_start(),
            referring_physician_name=name,
            referring_physician=physician,
            priority=data["priority"],
            reason=str(data["reason"]).strip(),
        )
