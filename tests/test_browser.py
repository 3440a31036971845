"""Pages in a real browser: log in, see the day, check a patient in, log out."""

from __future__ import annotations

import pytest
from django.utils import timezone

from core.services import sync_roles
from tests import factories
from tests.browser import browser_page, log_in, screenshot
from tests.personas import make_personas

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_front_desk_logs_in_and_checks_a_patient_in(live_server) -> None:  # type: ignore[no-untyped-def]
    sync_roles()
    make_personas()
    patient = factories.patient(family="Browsercase", given="Robin")
    order = factories.order(
        for_patient=patient,
        in_room=factories.room(),
        start=timezone.now().replace(minute=0, second=0, microsecond=0),
    )
    with browser_page() as page:
        page.goto(f"{live_server.url}/ris/today/")
        assert "/login/" in page.url  # an anonymous visitor lands on the login page
        log_in(page, live_server.url, "frontdesk", password="wrong password", wait_for=None)
        assert "didn't match" in page.text_content("main")
        log_in(page, live_server.url, "frontdesk", wait_for="#schedule")
        row = page.locator("#schedule tbody tr", has_text=order.accession_number)
        assert "BROWSERCASE, Robin" in row.text_content()
        assert "Scheduled" in row.text_content()
        screenshot(page, "front-desk-today")
        row.get_by_role("button", name="Check in").click()
        page.wait_for_selector("text=checked in")
        assert (
            "Arrived"
            in page.locator("#schedule tbody tr", has_text=order.accession_number).text_content()
        )
        nav = page.text_content("header nav")
        assert "Patients" in nav and "Audit trail" not in nav
        page.get_by_role("button", name="Log out").click()
        page.wait_for_url("**/login/")


def test_admin_sees_the_audit_trail_of_that_day(live_server) -> None:  # type: ignore[no-untyped-def]
    sync_roles()
    make_personas()
    factories.patient(family="Auditedcase")
    with browser_page() as page:
        log_in(page, live_server.url, "admin", wait_for="#audit-events")
        table = page.text_content("#audit-events")
        assert "Log in" in table and "admin" in table
        assert "AUDITEDCASE" in table  # the registration of the patient
        page.select_option("select[name=action]", "create")
        page.click("form.filters button[type=submit]")
        page.wait_for_url("**action=create**")
        assert "Log in" not in page.text_content("#audit-events tbody")
        screenshot(page, "admin-audit")
