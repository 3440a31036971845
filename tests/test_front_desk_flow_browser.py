"""One exam through the front desk's and the technologist's pages, in a real browser:
register a patient, order a CT, book it in the calendar, check the patient in, perform the
exam, and post its charge to the billing system."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from typing import Any

import pytest

from core.services import sync_roles
from ris.billing.models import Charge
from ris.models import AssigningAuthority, Order, RoomHours, Weekday
from tests import factories
from tests.browser import browser_page, log_in, screenshot
from tests.hl7util import MLLPReceiver
from tests.netutil import wait_until
from tests.personas import make_personas

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ACCESSION_SHOWN = re.compile(r"accession number (\S+)\.")


def _log_out(page: Any) -> None:
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/login/")


def test_register_order_book_check_in_perform_and_post_the_charge(
    live_server: Any, billing_system: MLLPReceiver
) -> None:
    sync_roles()
    make_personas()
    AssigningAuthority.objects.create(namespace_id="HOSP")
    factories.procedure(
        "CTHEAD", "CT", name="CT head without contrast", cpt_code="70450", price=Decimal("180")
    )
    room = factories.room()
    for day in Weekday:
        RoomHours.objects.create(room=room, weekday=day, opens=dt.time(0), closes=dt.time(23, 45))
    base = live_server.url
    with browser_page() as browser:
        page: Any = browser
        log_in(page, base, "frontdesk")

        page.goto(f"{base}/ris/patients/new/")
        page.fill("#id_family_name", "Flowcase")
        page.fill("#id_given_name", "Noa")
        page.fill("#id_birth_date", "1979-09-30")
        page.select_option("#id_sex", "F")
        page.fill("#id_identifiers-0-value", "MRN-7001")
        page.select_option("#id_identifiers-0-issuer", "HOSP")
        page.click("#register")
        page.wait_for_selector("h1:has-text('FLOWCASE, Noa')")

        page.click("#new-order")
        page.locator("#procedure-query").press_sequentially("head", delay=30)
        page.wait_for_function(
            "document.querySelectorAll('#procedure-choices input[name=procedure]').length === 1"
        )
        page.check("#procedure-choices input[name=procedure]")
        page.fill("#id_referring_physician_name", "Referrer^Rita")
        page.fill("#id_reason", "Headache for two weeks")
        page.click("#create-order")
        page.wait_for_selector("text=accession number")
        shown = ACCESSION_SHOWN.search(page.text_content(".messages"))
        assert shown is not None
        accession = shown.group(1)
        screenshot(page, "flow-1-order-created")

        page.click("#order-scheduling >> text=Book or move in the calendar")
        page.wait_for_selector("#calendar-mode")
        page.locator("#calendar form:has(input[name=start]) button").first.click()
        page.wait_for_selector("text=booked in CT 1")
        screenshot(page, "flow-2-booked")

        page.goto(f"{base}/ris/today/")
        row = page.locator("#schedule tbody tr", has_text=accession)
        row.get_by_role("button", name="Check in").click()
        page.wait_for_selector("text=checked in")
        assert "Arrived" in page.locator("#schedule tbody tr", has_text=accession).text_content()
        screenshot(page, "flow-3-checked-in")
        _log_out(page)

        log_in(page, base, "tech")
        page.goto(f"{base}/ris/exams/")
        page.locator("#exams tr", has_text=accession).get_by_role(
            "button", name="Start exam"
        ).click()
        page.wait_for_selector("text=started")
        page.locator("#exams tr", has_text=accession).get_by_role(
            "button", name="Complete exam"
        ).click()
        page.wait_for_selector("text=completed.")
        assert "Completed" in page.locator("#exams tr", has_text=accession).text_content()
        screenshot(page, "flow-4-completed")
        _log_out(page)

        log_in(page, base, "admin")
        page.goto(f"{base}/billing/")
        charge_row = page.locator("tr", has_text=accession)
        assert "Pending" in charge_row.text_content() and "70450" in charge_row.text_content()
        charge_row.get_by_role("checkbox").check()
        page.get_by_role("button", name="Post selected charges").click()
        page.wait_for_selector("text=1 charge(s) posted")
        screenshot(page, "flow-5-charge-posted")
    # The database is read once the browser is done (see tests/browser.py).
    order = Order.objects.get(accession_number=accession)
    assert order.status == Order.Status.COMPLETED
    assert order.patient.identifiers.get().value == "MRN-7001"
    charge = Charge.objects.get(order=order)
    assert (charge.status, charge.amount) == (Charge.Status.POSTED, Decimal("180.00"))
    wait_until(lambda: billing_system.received or None, what="the DFT^P03")
    [dft] = billing_system.received
    assert dft.message_type == "DFT^P03" and accession in dft.text
