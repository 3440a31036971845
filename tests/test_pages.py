"""Each page: who may see it, who may not, what it shows, and that the visit is audited."""

from __future__ import annotations

import pytest
from django.urls import reverse

from core.models import AuditEvent
from ris.models import Order
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("persona", "landing"),
    [
        ("front_desk", "ris:today"),
        ("technologist", "ris:exams-today"),
        ("radiologist", "reporting:worklist"),
        ("transcriptionist", "reporting:worklist"),
        ("referring_physician", "ris:order-list"),
        ("patient", "ris:my-record"),
        ("admin", "core:audit-list"),
    ],
)
def test_home_sends_each_role_to_its_page(personas, login, persona: str, landing: str) -> None:
    response = login(getattr(personas, persona)).get(reverse("home"))
    assert response.status_code == 302
    assert response["Location"] == reverse(landing)


def test_home_without_a_role_says_so(personas, login) -> None:
    response = login(personas.outsider).get(reverse("home"))
    assert response.status_code == 403
    assert b"No role assigned" in response.content


PAGE_ACCESS = [
    # url name, personas allowed (everyone else gets 403)
    ("ris:today", {"front_desk", "technologist", "radiologist", "admin"}),
    ("ris:exams-today", {"front_desk", "technologist", "radiologist", "admin"}),
    ("reporting:worklist", {"radiologist", "transcriptionist", "admin"}),
    ("core:audit-list", {"admin"}),
]


@pytest.mark.parametrize(("url_name", "allowed"), PAGE_ACCESS)
def test_page_access_by_role(personas, client, url_name: str, allowed: set[str]) -> None:
    for name, user in personas.all().items():
        client.force_login(user)
        status = client.get(reverse(url_name)).status_code
        assert status == (200 if name in allowed else 403), f"{name} on {url_name}: {status}"


def test_front_desk_sees_todays_schedule_and_checks_in(personas, login) -> None:
    order = factories.order(in_room=factories.room())
    client = login(personas.front_desk)
    page = client.get(reverse("ris:today"))
    assert order.accession_number in page.content.decode()
    response = client.post(reverse("ris:check-in", args=[order.pk]))
    assert response.status_code == 302
    order.refresh_from_db()
    assert order.status == Order.Status.ARRIVED
    assert order.requested_procedures.get().steps.get().status == "arrived"
    assert AuditEvent.objects.filter(
        action="update", object_type="ris.order", object_id=str(order.pk), actor_name="frontdesk"
    ).exists()


def test_checking_in_twice_is_refused_with_a_message(personas, login) -> None:
    order = factories.order()
    client = login(personas.front_desk)
    client.post(reverse("ris:check-in", args=[order.pk]))
    response = client.post(reverse("ris:check-in", args=[order.pk]), follow=True)
    assert "not scheduled" in response.content.decode()


def test_technologist_cannot_check_in(personas, login) -> None:
    order = factories.order()
    response = login(personas.technologist).post(reverse("ris:check-in", args=[order.pk]))
    assert response.status_code == 403
    order.refresh_from_db()
    assert order.status == Order.Status.SCHEDULED


def test_schedule_query_count_does_not_grow_with_rows(
    personas, login, django_assert_max_num_queries
) -> None:
    room = factories.room()
    for _ in range(8):
        factories.order(in_room=room)
    client = login(personas.front_desk)
    client.get(reverse("ris:today"))  # warm the session and permission caches
    with django_assert_max_num_queries(12):
        response = client.get(reverse("ris:today"))
    assert response.content.decode().count("Check in") == 8


def test_cancelled_steps_leave_the_schedule(personas, login) -> None:
    from ris.services import cancel_order

    kept, cancelled = factories.order(), factories.order()
    cancel_order(cancelled, "patient called to cancel")
    content = login(personas.front_desk).get(reverse("ris:today")).content.decode()
    assert kept.accession_number in content
    assert cancelled.accession_number not in content


def test_referring_physician_sees_only_their_own_orders(personas, login) -> None:
    mine = factories.order(
        referring_physician=personas.referring_physician, referring_physician_name="Doc^Ref"
    )
    theirs = factories.order(referring_physician=personas.other_physician)
    unreferred = factories.order()
    client = login(personas.referring_physician)
    listing = client.get(reverse("ris:order-list")).content.decode()
    assert mine.accession_number in listing
    assert theirs.accession_number not in listing
    assert unreferred.accession_number not in listing
    assert client.get(reverse("ris:order-detail", args=[mine.pk])).status_code == 200
    assert client.get(reverse("ris:order-detail", args=[theirs.pk])).status_code == 404
    assert client.get(reverse("ris:patient-detail", args=[mine.patient.pk])).status_code == 200
    assert client.get(reverse("ris:patient-detail", args=[theirs.patient.pk])).status_code == 404
    denied = AuditEvent.objects.filter(action="denied", actor_name="drref", outcome="failure")
    assert {event.object_type for event in denied} == {"ris.order", "ris.patient"}


def test_patient_sees_only_their_own_record(personas, login) -> None:
    from ris.services import grant_patient_access

    own = factories.patient(family="Selfview")
    other = factories.patient(family="Otherperson")
    grant_patient_access(own, personas.patient)
    client = login(personas.patient)
    page = client.get(reverse("ris:my-record"))
    assert page.status_code == 200
    assert "SELFVIEW" in page.content.decode()
    assert client.get(reverse("ris:patient-detail", args=[other.pk])).status_code == 404
    listing = client.get(reverse("ris:patient-list")).content.decode()
    assert "SELFVIEW" in listing and "OTHERPERSON" not in listing


def test_patient_without_a_record_is_refused(personas, login) -> None:
    assert login(personas.patient).get(reverse("ris:my-record")).status_code == 403


def test_outsider_sees_no_patients_or_orders(personas, login) -> None:
    patient = factories.patient(family="Hiddenname")
    factories.order(for_patient=patient)
    client = login(personas.outsider)
    assert "HIDDENNAME" not in client.get(reverse("ris:patient-list")).content.decode()
    assert client.get(reverse("ris:patient-detail", args=[patient.pk])).status_code == 404
    assert "No orders" in client.get(reverse("ris:order-list")).content.decode()


def test_patient_search_by_name_and_identifier(personas, login) -> None:
    factories.patient(
        family="Findme", identifiers=[factories.services.IdentifierInput("ZX-991", "DEMO")]
    )
    factories.patient(family="Notme")
    client = login(personas.front_desk)
    by_name = client.get(reverse("ris:patient-list"), {"q": "findm"}).content.decode()
    assert "FINDME" in by_name and "NOTME" not in by_name
    by_id = client.get(reverse("ris:patient-list"), {"q": "zx-991"}).content.decode()
    assert "FINDME" in by_id and "NOTME" not in by_id


def test_patient_list_query_count(personas, login, django_assert_max_num_queries) -> None:
    for number in range(10):
        factories.patient(family=f"Listed{number}")
    client = login(personas.front_desk)
    client.get(reverse("ris:patient-list"))
    with django_assert_max_num_queries(12):
        response = client.get(reverse("ris:patient-list"))
    assert response.content.decode().count("MRN") == 10


def test_radiologist_worklist_lists_unread_studies_stat_first(personas, login) -> None:
    from pacs.models import Study

    routine = factories.order()
    stat = factories.order(priority="stat")
    for order in (routine, stat):
        rp = order.requested_procedures.get()
        Study.objects.create(
            study_instance_uid=rp.study_instance_uid,
            patient=order.patient,
            requested_procedure=rp,
            accession_number=order.accession_number,
        )
    content = login(personas.radiologist).get(reverse("reporting:worklist")).content.decode()
    assert content.index(stat.accession_number) < content.index(routine.accession_number)


def test_audit_page_filters_by_patient(personas, login) -> None:
    first, second = factories.patient(family="Auditone"), factories.patient(family="Audittwo")
    client = login(personas.front_desk)
    client.get(reverse("ris:patient-detail", args=[first.pk]))
    client.get(reverse("ris:patient-detail", args=[second.pk]))
    page = login(personas.admin).get(reverse("core:audit-list"), {"patient_key": first.pk})
    content = page.content.decode()
    assert "AUDITONE" in content and "AUDITTWO" not in content


def test_audit_page_rejects_a_bad_filter(personas, login) -> None:
    response = login(personas.admin).get(reverse("core:audit-list"), {"date_from": "not-a-date"})
    assert response.status_code == 400
    assert "Enter a valid date" in response.content.decode()
