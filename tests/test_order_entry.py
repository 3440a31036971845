"""Order entry in the browser: catalogue search, booking, accession number, instructions."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from core.models import AuditEvent
from ris.forms import DEFAULT_REQUESTED_TIME
from ris.models import Order, Patient, ProcedureType
from tests import factories

pytestmark = pytest.mark.django_db

WRITERS = {"front_desk", "admin"}
PREPARATION = "Nothing to eat for 4 hours before.\nDrink 1 litre of water."


@pytest.fixture
def catalogue(db: None) -> dict[str, ProcedureType]:
    return {
        "ct": factories.procedure(
            "CTABD", "CT", name="CT abdomen with contrast", preparation_instructions=PREPARATION
        ),
        "mr": factories.procedure("MRKNEE", "MR", name="MR knee"),
        "us": factories.procedure("USABD", "US", name="US abdomen"),
        "old": factories.procedure("XROLD", "CR", name="XR abdomen (retired)", active=False),
    }


@pytest.fixture
def patient(db: None) -> Patient:
    return factories.patient(family="Orderly", given="Pat")


def order_form(procedure_type: ProcedureType, **overrides: Any) -> dict[str, Any]:
    data = {
        "procedure": procedure_type.pk,
        "referring_physician": "",
        "referring_physician_name": "Welby^Marcus",
        "priority": "routine",
        "reason": "Abdominal pain, rule out appendicitis",
        "requested_date": (timezone.localdate() + dt.timedelta(days=3)).isoformat(),
        "requested_time": "",
    }
    data.update(overrides)
    return data


def test_catalogue_search_by_name_or_code(personas, login, catalogue) -> None:
    client = login(personas.front_desk)
    url = reverse("ris:procedure-search")
    by_name = client.get(url, {"procedure_query": "abdomen"}).content.decode()
    assert "CTABD" in by_name and "USABD" in by_name and "MRKNEE" not in by_name
    assert "XROLD" not in by_name  # inactive lines cannot be ordered
    by_code = client.get(url, {"procedure_query": "mrk"}).content.decode()
    assert "MRKNEE" in by_code and "CTABD" not in by_code
    # The line already chosen stays in the list (and checked) whatever is typed next.
    kept = client.get(
        url, {"procedure_query": "knee", "procedure": catalogue["ct"].pk}
    ).content.decode()
    assert "CTABD" in kept and f'value="{catalogue["ct"].pk}" checked' in kept


def test_front_desk_enters_an_order_and_sees_its_accession_number(
    personas, login, catalogue, patient
) -> None:
    client = login(personas.front_desk)
    page = client.get(reverse("ris:order-create", args=[patient.pk]))
    assert page.status_code == 200 and "CTABD" in page.content.decode()
    response = client.post(
        reverse("ris:order-create", args=[patient.pk]), order_form(catalogue["ct"]), follow=True
    )
    order = Order.objects.get(patient=patient)
    assert response.redirect_chain[-1][0] == reverse("ris:order-detail", args=[order.pk])
    assert f"accession number {order.accession_number}" in response.content.decode()
    assert reverse("ris:order-instructions", args=[order.pk]) in response.content.decode()
    assert order.reason == "Abdominal pain, rule out appendicitis"
    assert (
        order.referring_physician_name == "Welby^Marcus" and order.created_by == personas.front_desk
    )
    step = order.requested_procedures.get().steps.get()
    expected = timezone.make_aware(
        dt.datetime.combine(timezone.localdate() + dt.timedelta(days=3), DEFAULT_REQUESTED_TIME)
    )
    assert step.scheduled_start == expected and step.room is None and step.modality == "CT"
    assert AuditEvent.objects.filter(
        action="create", object_type="ris.order", object_id=str(order.pk)
    ).exists()


def test_a_stat_order_for_today_starts_now_not_in_the_past(
    personas, login, catalogue, patient
) -> None:
    client = login(personas.front_desk)
    data = order_form(
        catalogue["ct"],
        priority="stat",
        requested_date=timezone.localdate().isoformat(),
        requested_time="00:00",
    )
    assert client.post(reverse("ris:order-create", args=[patient.pk]), data).status_code == 302
    order = Order.objects.get(patient=patient)
    start = order.requested_procedures.get().steps.get().scheduled_start
    assert order.priority == "stat"
    assert timezone.now() <= start <= timezone.now() + dt.timedelta(minutes=15)


def test_a_referring_physician_with_an_account_then_sees_the_order(
    personas, login, catalogue, patient
) -> None:
    doctor = personas.referring_physician
    doctor.first_name, doctor.last_name = "Marcus", "Welby"
    doctor.save()
    client = login(personas.front_desk)
    data = order_form(catalogue["mr"], referring_physician=doctor.pk, referring_physician_name="")
    assert client.post(reverse("ris:order-create", args=[patient.pk]), data).status_code == 302
    order = Order.objects.get(patient=patient)
    assert order.referring_physician == doctor and order.referring_physician_name == "Welby^Marcus"
    doctor_client = login(doctor)
    assert doctor_client.get(reverse("ris:order-detail", args=[order.pk])).status_code == 200
    assert doctor_client.get(reverse("ris:patient-detail", args=[patient.pk])).status_code == 200


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"procedure": ""}, "Choose a procedure"),
        ({"procedure": "old"}, "Select a valid choice"),
        ({"reason": ""}, "This field is required"),
        ({"referring_physician_name": ""}, "Name the referring physician"),
        ({"requested_date": "2001-01-01"}, "in the past"),
        ({"priority": "whenever"}, "Select a valid choice"),
    ],
)
def test_bad_orders_change_nothing(personas, login, catalogue, patient, overrides, message) -> None:
    if overrides.get("procedure") == "old":
        overrides["procedure"] = catalogue["old"].pk
    response = login(personas.front_desk).post(
        reverse("ris:order-create", args=[patient.pk]), order_form(catalogue["ct"], **overrides)
    )
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not Order.objects.exists()


def test_only_front_desk_and_administrators_may_enter_orders(
    personas, client, catalogue, patient
) -> None:
    for name, user in personas.all().items():
        client.force_login(user)
        expected = 200 if name in WRITERS else 403
        assert client.get(reverse("ris:order-create", args=[patient.pk])).status_code == expected, (
            name
        )
        assert client.get(reverse("ris:procedure-search")).status_code == expected, name
        posted = client.post(
            reverse("ris:order-create", args=[patient.pk]), order_form(catalogue["us"])
        )
        assert posted.status_code == (302 if name in WRITERS else 403), name
    assert Order.objects.count() == len(WRITERS)


def test_no_order_for_a_merged_record(personas, login, catalogue, patient) -> None:
    from ris import services

    survivor = factories.patient(family="Survivor")
    services.merge_patients(survivor, patient)
    response = login(personas.front_desk).post(
        reverse("ris:order-create", args=[patient.pk]), order_form(catalogue["ct"])
    )
    assert response["Location"] == reverse("ris:patient-detail", args=[survivor.pk])
    assert not Order.objects.exists()


# ---------------------------------------------------------------- printable instructions


def test_instructions_show_what_when_where_and_preparation(
    personas, login, catalogue, patient
) -> None:
    room = factories.room("CT 2", "CT", "CT2")
    room.location = "Building B, ground floor"
    room.save()
    start = dt.datetime(2031, 5, 6, 9, 30, tzinfo=dt.UTC)
    order = factories.order(
        for_patient=patient, procedure_type=catalogue["ct"], in_room=room, start=start
    )
    page = login(personas.front_desk).get(reverse("ris:order-instructions", args=[order.pk]))
    body = page.content.decode()
    assert page.status_code == 200
    for text in (
        "ORDERLY, Pat",
        "CT abdomen with contrast",
        "Tuesday, 6 May 2031",
        "09:30",
        "CT 2",
        "Building B",
        "Drink 1 litre of water.",
        "@media print",
        order.accession_number,
    ):
        assert text in body, text
    assert AuditEvent.objects.filter(action="view", detail="patient instructions").count() == 1


def test_instructions_without_a_room_say_to_be_confirmed(
    personas, login, catalogue, patient
) -> None:
    order = factories.order(for_patient=patient, procedure_type=catalogue["mr"])
    body = (
        login(personas.front_desk)
        .get(reverse("ris:order-instructions", args=[order.pk]))
        .content.decode()
    )
    assert "to be confirmed" in body and "No special preparation" in body


def test_instructions_follow_order_visibility(personas, client, catalogue, patient) -> None:
    mine = factories.order(for_patient=patient, referring_physician=personas.referring_physician)
    for name, user in personas.all().items():
        client.force_login(user)
        status = client.get(reverse("ris:order-instructions", args=[mine.pk])).status_code
        allowed = {
            "front_desk",
            "admin",
            "technologist",
            "radiologist",
            "transcriptionist",
            "referring_physician",
        }
        assert status == (200 if name in allowed else 404), name
    assert AuditEvent.objects.filter(action="denied", object_type="ris.order").count() == 3
