"""Registration and order entry in a real browser: register, duplicate warning, search, order."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from django.utils import timezone

from core.services import sync_roles
from ris.models import AssigningAuthority, Order, Patient
from tests import factories
from tests.browser import browser_page, screenshot
from tests.personas import PASSWORD, make_personas

# The success message after order entry names the generated accession number.
ACCESSION_SHOWN = re.compile(r"accession number (\S+)\.")

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _register(page: Any, family: str, given: str, born: str, identifier: str) -> None:
    page.fill("#id_family_name", family)
    page.fill("#id_given_name", given)
    page.fill("#id_birth_date", born)
    page.select_option("#id_sex", "F")
    page.fill("#id_identifiers-0-value", identifier)
    page.select_option("#id_identifiers-0-issuer", "HOSP")
    page.click("#register")


def test_register_search_and_order(live_server: Any) -> None:
    sync_roles()
    make_personas()
    AssigningAuthority.objects.create(namespace_id="HOSP")
    factories.procedure(
        "CTCHEST",
        "CT",
        name="CT chest without contrast",
        preparation_instructions="Remove metal objects.",
    )
    factories.procedure("MRKNEE", "MR", name="MR knee")
    with browser_page() as browser:
        page: Any = browser
        page.goto(f"{live_server.url}/login/")
        page.fill("#id_username", "frontdesk")
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_selector("header nav")

        # Register a patient from the Patients page.
        page.goto(f"{live_server.url}/ris/patients/")
        page.click("#register-patient")
        page.wait_for_selector("#register-form")
        _register(page, "Müller", "Jürgen", "1966-04-12", "MRN-2001")
        page.wait_for_selector("h1:has-text('MÜLLER, Jürgen')")
        assert "registered" in page.text_content(".messages")
        first_url = page.url  # the new record's page

        # A second, similar one: the duplicate warning, then "register anyway".
        page.goto(f"{live_server.url}/ris/patients/new/")
        _register(page, "Muller", "Jurgen", "1966-04-12", "MRN-2002")
        page.wait_for_selector("#duplicate-warning")
        assert "same name born 1966-04-12" in page.text_content("#duplicate-warning")
        screenshot(page, "registration-duplicate-warning")
        assert page.url.endswith("/ris/patients/new/")  # not saved yet
        page.click("#register-anyway")
        page.wait_for_selector("h1:has-text('MULLER, Jurgen')")
        assert page.url != first_url

        # Search as you type: no submit, the rows follow the keys.
        page.goto(f"{live_server.url}/ris/patients/")
        page.locator("input[name=q]").press_sequentially("müller j", delay=30)
        page.wait_for_function("document.querySelectorAll('#patients tbody tr a').length === 2")
        page.locator("input[name=q]").fill("")
        page.locator("input[name=q]").press_sequentially("mrn-2001", delay=30)
        page.wait_for_function("document.querySelectorAll('#patients tbody tr a').length === 1")
        assert "MRN-2001" in page.text_content("#patients tbody")
        screenshot(page, "registration-search-as-you-type")

        # New order from the patient's page, the procedure found by typing.
        page.click("#patients tbody tr a")
        page.wait_for_selector("h1:has-text('MÜLLER, Jürgen')")
        page.click("#new-order")
        page.wait_for_selector("#order-form")
        page.locator("#procedure-query").press_sequentially("chest", delay=30)
        page.wait_for_function(
            "document.querySelectorAll('#procedure-choices input[name=procedure]').length === 1"
        )
        page.check("#procedure-choices input[name=procedure]")
        page.fill("#id_referring_physician_name", "Welby^Marcus")
        page.select_option("#id_priority", "urgent")
        page.fill("#id_reason", "Persistent cough")
        requested = timezone.localdate() + dt.timedelta(days=2)
        page.fill("#id_requested_date", requested.isoformat())
        screenshot(page, "order-entry-form")
        page.click("#create-order")
        page.wait_for_selector("text=accession number")
        accession = ACCESSION_SHOWN.search(page.text_content(".messages"))
        assert accession is not None
        assert accession.group(1) in page.text_content("h1")
        assert "Urgent" in page.text_content("main")
        screenshot(page, "order-entry-created")

        # The printable instructions of that order, from the order's page.
        page.click("#order-instructions")
        page.wait_for_selector("#patient-instructions")
        assert "Remove metal objects." in page.text_content("#patient-instructions")
        page.emulate_media(media="print")
        assert not page.locator("header.topbar").is_visible()
        screenshot(page, "order-instructions-print")

        # The patient's history: the order and its exam; the studies fragment loaded by htmx.
        page.emulate_media(media="screen")
        page.goto(first_url)
        page.wait_for_selector("#patient-study-list")
        assert accession.group(1) in page.text_content("#patient-orders")
        screenshot(page, "patient-history")
    # The database is read only once the browser is done (a read from this thread while the
    # live server serves leaves a PostgreSQL session open past the test database's drop).
    assert Patient.objects.filter(search_name="MULLER JURGEN").count() == 2
    order = Order.objects.get(accession_number=accession.group(1))
    assert order.patient.identifiers.get().value == "MRN-2001"
    assert (order.priority, order.reason) == ("urgent", "Persistent cough")
