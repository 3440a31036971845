"""Registration in the browser: search, register with duplicate warnings, edit, merge, history."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.urls import reverse

from core.models import AuditEvent
from ris import selectors, services
from ris.hl7 import inbound
from ris.hl7.models import Destination, OutboundMessage
from ris.models import AssigningAuthority, Order, Patient
from ris.names import patient_search_key, search_key
from tests import factories
from tests.hl7util import adt

pytestmark = pytest.mark.django_db

# Who may register, edit, merge and enter orders; everyone else is refused with 403.
WRITERS = {"front_desk", "admin"}
# Who may open any patient's page (the referring physician only their own patients').
VIEWERS = {"front_desk", "admin", "technologist", "radiologist", "transcriptionist"}


def mueller(**fields: Any) -> Patient:
    return factories.patient(
        family="Müller",
        given="Hans",
        birth_date=fields.pop("birth_date", dt.date(1970, 1, 31)),
        identifiers=fields.pop("identifiers", [services.IdentifierInput("MRN-4711", "HOSP")]),
        **fields,
    )


def registration(**overrides: str) -> dict[str, str]:
    """The registration form as the browser posts it: one identifier row filled in."""
    data = {
        "family_name": "Testperson",
        "given_name": "Robin",
        "middle_name": "",
        "birth_date": "1981-05-06",
        "sex": "F",
        "phone": "",
        "email": "",
        "address": "",
        "identifiers-TOTAL_FORMS": "3",
        "identifiers-INITIAL_FORMS": "0",
        "identifiers-MIN_NUM_FORMS": "0",
        "identifiers-MAX_NUM_FORMS": "3",
        "identifiers-0-value": "MRN-1000",
        "identifiers-0-issuer": "HOSP",
        "identifiers-0-type": "MR",
        "identifiers-1-value": "",
        "identifiers-1-issuer": "",
        "identifiers-1-type": "MR",
        "identifiers-2-value": "",
        "identifiers-2-issuer": "",
        "identifiers-2-type": "MR",
    }
    data.update(overrides)
    return data


@pytest.fixture
def issuers(db: None) -> list[AssigningAuthority]:
    return [
        AssigningAuthority.objects.get_or_create(namespace_id=name)[0]
        for name in ("HOSP", "NATION")
    ]


# ---------------------------------------------------------------- the search key


def test_search_key_folds_case_and_accents() -> None:
    assert search_key("Müller", "Hans") == "MULLER HANS"
    assert search_key("  Ñúñez-Öztürk ", "Łukasz", "Straße") == "NUNEZ-OZTURK LUKASZ STRASSE"
    assert search_key("muller") == search_key("MÜLLER") == "MULLER"


def test_services_keep_the_search_name(personas) -> None:
    patient = mueller()
    assert patient.search_name == "MULLER HANS"
    services.update_patient(patient, {"given_name": "Jürgen"})
    patient.refresh_from_db()
    assert patient.search_name == "MULLER JURGEN"


def test_an_hl7_registration_is_found_without_its_accents(personas, settings) -> None:
    settings.HL7_DEFAULT_ASSIGNING_AUTHORITY = "HOSP"
    inbound.receive(
        adt("ADT-77", "A04", "PAT-77^^^HOSP^MR", "JOHANSSØN^ÅSA", charset="UNICODE UTF-8")
    )
    patient = services.find_patient_by_identifier("PAT-77", "HOSP")
    assert patient is not None
    assert patient.search_name == "JOHANSSON ASA"
    assert list(selectors.patients_visible_to(personas.front_desk, "johansson")) == [patient]


def test_the_migration_fills_the_search_name_of_existing_patients() -> None:
    migration = __import__(
        "ris.migrations.0002_patient_search_name", fromlist=["fill_search_names"]
    )
    patient = mueller()
    Patient.objects.filter(pk=patient.pk).update(search_name="")
    migration.fill_search_names(django_apps, None)
    patient.refresh_from_db()
    assert patient.search_name == patient_search_key("Müller", "Hans")


# ---------------------------------------------------------------- search


@pytest.mark.parametrize("typed", ["muller", "MÜLLER", "mülle", "hans muller", "Muller, Hans"])
def test_name_search_ignores_case_and_accents(personas, login, typed: str) -> None:
    mueller()
    factories.patient(family="Mulligan")
    page = login(personas.front_desk).get(reverse("ris:patient-list"), {"q": typed})
    body = page.content.decode()
    assert "MÜLLER, Hans" in body
    assert "MULLIGAN" not in body


def test_search_by_identifier_and_by_birth_date(personas, login) -> None:
    found = mueller()
    factories.patient(family="Other", birth_date=dt.date(1970, 2, 1))
    client = login(personas.front_desk)
    for params in (
        {"q": "mrn-4711"},
        {"q": "1970-01-31"},
        {"q": "31.01.1970"},
        {"born": "1970-01-31"},
    ):
        body = client.get(reverse("ris:patient-list"), params).content.decode()
        assert str(found) in body and "OTHER" not in body, params
    body = client.get(reverse("ris:patient-list"), {"q": "muller", "born": "1971-01-01"})
    assert "No patients found" in body.content.decode()


def test_search_as_you_type_answers_only_the_rows(personas, login) -> None:
    mueller()
    response = login(personas.front_desk).get(
        reverse("ris:patient-list"), {"q": "mul"}, headers={"HX-Request": "true"}
    )
    body = response.content.decode()
    assert body.lstrip().startswith('<div id="patient-rows">')
    assert "<html" not in body and "MÜLLER" in body
    event = AuditEvent.objects.filter(action="query", object_type="ris.patient").last()
    assert event is not None and "q=mul" in event.detail


def test_search_as_you_type_query_count(personas, login, django_assert_max_num_queries) -> None:
    for number in range(10):
        factories.patient(family=f"Müller{number}")
    client = login(personas.front_desk)
    client.get(reverse("ris:patient-list"), {"q": "muller"}, headers={"HX-Request": "true"})
    with django_assert_max_num_queries(10):
        response = client.get(
            reverse("ris:patient-list"), {"q": "muller"}, headers={"HX-Request": "true"}
        )
    assert response.content.decode().count("MRN") == 10


def test_patients_page_offers_registration_to_the_front_desk_only(personas, login) -> None:
    assert (
        "Register patient"
        in login(personas.front_desk).get(reverse("ris:patient-list")).content.decode()
    )
    assert (
        "Register patient"
        not in login(personas.technologist).get(reverse("ris:patient-list")).content.decode()
    )


# ---------------------------------------------------------------- register


def test_front_desk_registers_a_patient_with_identifiers(personas, login, issuers) -> None:
    client = login(personas.front_desk)
    assert client.get(reverse("ris:patient-register")).status_code == 200
    response = client.post(
        reverse("ris:patient-register"),
        registration(
            **{
                "family_name": "Ångström",
                "identifiers-1-value": "NI-55",
                "identifiers-1-issuer": "NATION",
                "identifiers-1-type": "NI",
            }
        ),
    )
    patient = Patient.objects.get(family_name="Ångström")
    assert response.status_code == 302
    assert response["Location"] == reverse("ris:patient-detail", args=[patient.pk])
    assert patient.search_name == "ANGSTROM ROBIN"
    assert {(i.value, i.issuer.namespace_id, i.type) for i in patient.identifiers.all()} == {
        ("MRN-1000", "HOSP", "MR"),
        ("NI-55", "NATION", "NI"),
    }
    created = AuditEvent.objects.get(action="create", object_type="ris.patient")
    assert created.actor == personas.front_desk and created.patient_key == str(patient.pk)


def test_same_name_and_birth_date_warns_before_registering(personas, login, issuers) -> None:
    existing = mueller()
    client = login(personas.front_desk)
    data = registration(
        family_name="MULLER",
        given_name="hans",
        birth_date="1970-01-31",
        **{"identifiers-0-value": "NEW-1"},
    )
    warned = client.post(reverse("ris:patient-register"), data)
    assert warned.status_code == 200
    body = warned.content.decode()
    assert 'id="duplicate-warning"' in body and "same name born 1970-01-31" in body
    assert reverse("ris:patient-detail", args=[existing.pk]) in body
    assert Patient.objects.count() == 1
    confirmed = client.post(reverse("ris:patient-register"), {**data, "register_anyway": "1"})
    assert confirmed.status_code == 302
    assert Patient.objects.filter(search_name="MULLER HANS").count() == 2


def test_another_birth_date_is_no_duplicate(personas, login, issuers) -> None:
    mueller()
    response = login(personas.front_desk).post(
        reverse("ris:patient-register"),
        registration(family_name="Müller", given_name="Hans", birth_date="1990-01-31"),
    )
    assert response.status_code == 302


def test_same_identifier_under_another_issuer_warns(personas, login, issuers) -> None:
    mueller()  # MRN-4711 from HOSP
    data = registration(**{"identifiers-0-value": "mrn-4711", "identifiers-0-issuer": "NATION"})
    warned = login(personas.front_desk).post(reverse("ris:patient-register"), data)
    assert warned.status_code == 200
    assert "identifier MRN-4711 held under issuer HOSP" in warned.content.decode()
    assert not Patient.objects.filter(family_name="Testperson").exists()


def test_an_identifier_held_under_the_same_issuer_is_refused(personas, login, issuers) -> None:
    mueller()
    data = registration(**{"identifiers-0-value": "MRN-4711", "register_anyway": "1"})
    refused = login(personas.front_desk).post(reverse("ris:patient-register"), data)
    assert refused.status_code == 400
    assert "already belongs to patient" in refused.content.decode()
    assert not Patient.objects.filter(family_name="Testperson").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"family_name": " "}, "This field is required"),
        ({"identifiers-0-value": "", "identifiers-0-issuer": ""}, "at least one identifier"),
        ({"identifiers-0-issuer": ""}, "Choose who issued"),
        ({"identifiers-0-issuer": "NOSUCH"}, "Select a valid choice"),
        ({"birth_date": "2999-01-01"}, "in the future"),
    ],
)
def test_bad_registrations_change_nothing(personas, login, issuers, overrides, message) -> None:
    response = login(personas.front_desk).post(
        reverse("ris:patient-register"), registration(**overrides)
    )
    assert response.status_code == 400
    assert message in response.content.decode()
    assert Patient.objects.count() == 0


def test_only_front_desk_and_administrators_may_register(personas, client, issuers) -> None:
    for name, user in personas.all().items():
        client.force_login(user)
        expected = 200 if name in WRITERS else 403
        assert client.get(reverse("ris:patient-register")).status_code == expected, name
        posted = client.post(
            reverse("ris:patient-register"),
            registration(**{"identifiers-0-value": f"ID-{name}", "register_anyway": "1"}),
        )
        assert posted.status_code == (302 if name in WRITERS else 403), name
    assert Patient.objects.count() == len(WRITERS)
    assert AuditEvent.objects.filter(action="denied", object_type="ris.patient").count() >= 2


# ---------------------------------------------------------------- edit


def test_editing_demographics_is_audited_and_sent_as_adt_a08(personas, login) -> None:
    Destination.objects.create(name="his", host="127.0.0.1", port=3999, message_types="ADT")
    patient = mueller()
    client = login(personas.front_desk)
    page = client.get(reverse("ris:patient-edit", args=[patient.pk]))
    assert page.status_code == 200 and 'value="Müller"' in page.content.decode()
    response = client.post(
        reverse("ris:patient-edit", args=[patient.pk]),
        {
            "family_name": "Müller-Lüdenscheidt",
            "given_name": "Hans",
            "birth_date": "1970-01-31",
            "sex": "M",
            "phone": "555-0199",
        },
    )
    assert response.status_code == 302
    patient.refresh_from_db()
    assert patient.search_name == "MULLER-LUDENSCHEIDT HANS"
    update = AuditEvent.objects.get(action="update", object_type="ris.patient")
    assert update.actor == personas.front_desk
    assert "family_name" in update.detail and "phone" in update.detail
    [message] = OutboundMessage.objects.all()
    assert message.message_type == "ADT^A08"
    assert "MÜLLER-LÜDENSCHEIDT" in message.raw.upper()


def test_an_unchanged_form_changes_nothing(personas, login) -> None:
    patient = mueller(sex="M")
    response = login(personas.front_desk).post(
        reverse("ris:patient-edit", args=[patient.pk]),
        {"family_name": "Müller", "given_name": "Hans", "birth_date": "1970-01-31", "sex": "M"},
    )
    assert response.status_code == 302
    assert not AuditEvent.objects.filter(action="update").exists()


def test_a_bad_edit_is_shown_again_and_changes_nothing(personas, login) -> None:
    patient = mueller()
    response = login(personas.front_desk).post(
        reverse("ris:patient-edit", args=[patient.pk]),
        {"family_name": "", "sex": "M", "email": "not-an-address"},
    )
    assert response.status_code == 400
    body = response.content.decode()
    assert "This field is required" in body and "valid email" in body
    patient.refresh_from_db()
    assert patient.family_name == "Müller"


def test_only_front_desk_and_administrators_may_edit(personas, client) -> None:
    patient = mueller()
    for name, user in personas.all().items():
        client.force_login(user)
        status = client.get(reverse("ris:patient-edit", args=[patient.pk])).status_code
        assert status == (200 if name in WRITERS else 403), name
        posted = client.post(
            reverse("ris:patient-edit", args=[patient.pk]), {"family_name": f"By{name}", "sex": "U"}
        )
        assert posted.status_code == (302 if name in WRITERS else 403), name
    patient.refresh_from_db()
    assert patient.family_name in {"Byfront_desk", "Byadmin"}


# ---------------------------------------------------------------- merge


def test_merge_shows_both_records_then_merges(personas, login) -> None:
    survivor = mueller()
    duplicate = factories.patient(family="Mueller", given="Hans", birth_date=dt.date(1970, 1, 31))
    order = factories.order(for_patient=duplicate)
    client = login(personas.front_desk)
    found = client.get(
        reverse("ris:patient-merge", args=[survivor.pk]),
        {"q": "mueller"},
        headers={"HX-Request": "true"},
    ).content.decode()
    assert f"?other={duplicate.pk}" in found and "<html" not in found
    compare = client.get(reverse("ris:patient-merge", args=[survivor.pk]), {"other": duplicate.pk})
    body = compare.content.decode()
    assert "MÜLLER, Hans" in body and "MUELLER, Hans" in body and "MRN-4711" in body
    assert Patient.objects.get(pk=duplicate.pk).merged_into is None  # nothing happens on a GET
    response = client.post(
        reverse("ris:patient-merge", args=[survivor.pk]),
        {"survivor": survivor.pk, "merged": duplicate.pk},
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("ris:patient-detail", args=[survivor.pk])
    duplicate.refresh_from_db()
    assert duplicate.merged_into == survivor
    assert Order.objects.get(pk=order.pk).patient == survivor
    assert (
        AuditEvent.objects.filter(action="update", detail__startswith="merged patient").count() == 2
    )


def test_merge_refuses_a_patient_into_itself_and_a_merged_one(personas, login) -> None:
    patient, other = mueller(), factories.patient(family="Other")
    client = login(personas.front_desk)
    url = reverse("ris:patient-merge", args=[patient.pk])
    assert client.post(url, {"survivor": patient.pk, "merged": patient.pk}).status_code == 302
    assert client.post(url, {"survivor": other.pk, "merged": 999999}).status_code == 404
    services.merge_patients(patient, other)
    # The merged record's pages send to the survivor.
    gone = client.get(reverse("ris:patient-merge", args=[other.pk]))
    assert gone["Location"] == reverse("ris:patient-detail", args=[patient.pk])
    assert Patient.objects.filter(merged_into__isnull=True).count() == 1


def test_only_front_desk_and_administrators_may_merge(personas, client) -> None:
    patient, other = mueller(), factories.patient(family="Other")
    for name, user in personas.all().items():
        client.force_login(user)
        url = reverse("ris:patient-merge", args=[patient.pk])
        assert client.get(url, {"other": other.pk}).status_code == (
            200 if name in WRITERS else 403
        ), name
        if name not in WRITERS:
            assert client.post(url, {"survivor": patient.pk, "merged": other.pk}).status_code == 403
    assert Patient.objects.filter(merged_into__isnull=True).count() == 2


# ---------------------------------------------------------------- history


def test_patient_page_shows_orders_exams_and_actions(
    personas, login, django_assert_max_num_queries
) -> None:
    patient = mueller()
    room = factories.room()
    for _ in range(3):
        factories.order(for_patient=patient, in_room=room)
    client = login(personas.front_desk)
    client.get(reverse("ris:patient-detail", args=[patient.pk]))
    with django_assert_max_num_queries(14):
        page = client.get(reverse("ris:patient-detail", args=[patient.pk]))
    body = page.content.decode()
    assert body.count(room.name) == 3 and body.count("Scheduled") >= 6
    assert reverse("ris:order-create", args=[patient.pk]) in body
    assert reverse("ris:patient-edit", args=[patient.pk]) in body
    assert reverse("pacs:patient-studies", args=[patient.pk]) in body
    assert 'id="patient-reports"' in body


@pytest.mark.parametrize("persona", sorted(VIEWERS - WRITERS))
def test_viewers_see_the_history_without_actions(personas, login, persona: str) -> None:
    patient = mueller()
    order = factories.order(for_patient=patient)
    body = (
        login(getattr(personas, persona))
        .get(reverse("ris:patient-detail", args=[patient.pk]))
        .content.decode()
    )
    assert order.accession_number in body
    assert reverse("ris:order-create", args=[patient.pk]) not in body
    assert reverse("ris:patient-edit", args=[patient.pk]) not in body


def test_referring_physician_sees_only_their_patients_and_orders(personas, login) -> None:
    patient = mueller()
    mine = factories.order(for_patient=patient, referring_physician=personas.referring_physician)
    not_mine = factories.order(for_patient=patient)
    stranger = factories.patient(family="Stranger")
    client = login(personas.referring_physician)
    body = client.get(reverse("ris:patient-detail", args=[patient.pk])).content.decode()
    assert mine.accession_number in body and not_mine.accession_number not in body
    assert client.get(reverse("ris:patient-detail", args=[stranger.pk])).status_code == 404
    listing = client.get(reverse("ris:patient-list")).content.decode()
    assert "MÜLLER" in listing and "STRANGER" not in listing


@pytest.mark.parametrize("persona", ["patient", "outsider"])
def test_patient_and_outsider_see_no_other_record(personas, login, persona: str) -> None:
    patient = mueller()
    client = login(getattr(personas, persona))
    assert client.get(reverse("ris:patient-detail", args=[patient.pk])).status_code == 404
    assert client.get(reverse("pacs:patient-studies", args=[patient.pk])).status_code == 404
    assert "MÜLLER" not in client.get(reverse("ris:patient-list")).content.decode()


def test_studies_fragment_lists_what_the_person_may_see(personas, login) -> None:
    from pacs.models import Study

    patient = mueller()
    order = factories.order(for_patient=patient, referring_physician=personas.referring_physician)
    rp = order.requested_procedures.get()
    Study.objects.create(
        study_instance_uid=rp.study_instance_uid,
        patient=patient,
        requested_procedure=rp,
        accession_number=order.accession_number,
        study_description="CT HEAD PLAIN",
        modalities_in_study="\\CT\\",
    )
    Study.objects.create(study_instance_uid="1.2.3.99", patient=patient, study_description="OLD XR")
    url = reverse("pacs:patient-studies", args=[patient.pk])
    radiologist = login(personas.radiologist).get(url).content.decode()
    assert "CT HEAD PLAIN" in radiologist and "OLD XR" in radiologist and "<html" not in radiologist
    referrer = login(personas.referring_physician).get(url).content.decode()
    assert "CT HEAD PLAIN" in referrer and "OLD XR" not in referrer
    front_desk = login(personas.front_desk).get(url).content.decode()
    assert "No studies you may see" in front_desk
    assert AuditEvent.objects.filter(object_type="pacs.study", action="query").count() == 3
