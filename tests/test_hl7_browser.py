"""The HL7 interface page in a real browser: find a failed message, fix, re-process it."""

from __future__ import annotations

import pytest

from core.services import sync_roles
from ris.hl7 import inbound
from ris.models import Order
from tests import factories
from tests.browser import browser_page, screenshot
from tests.hl7util import adt, orm
from tests.personas import PASSWORD, make_personas

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_admin_finds_a_failed_order_and_reprocesses_it(live_server) -> None:  # type: ignore[no-untyped-def]
    sync_roles()
    make_personas()
    inbound.receive(adt("B-ADT", "A04", "BRW-1^^^HOSP^MR", "BROWSERCASE^ROBIN"))
    inbound.receive(orm("B-ORM", placer="PLC-B", code="USABD", identifiers="BRW-1^^^HOSP^MR"))
    with browser_page() as page:
        page.goto(f"{live_server.url}/")
        page.fill("#id_username", "admin")
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.get_by_role("link", name="HL7").click()
        page.fill("#id_patient", "BRW-1")
        page.select_option("#id_status", "error")
        page.get_by_role("button", name="Search").click()
        row = page.locator("#hl7-messages tbody tr", has_text="B-ORM")
        assert "OBR-4" in row.text_content()
        assert page.locator("#hl7-messages tbody tr").count() == 1
        screenshot(page, "hl7-messages")
        row.get_by_role("link").first.click()
        page.wait_for_selector("#hl7-raw")
        factories.procedure("USABD", "US")  # the catalogue gets the missing code
        page.get_by_role("button", name="Re-process this message").click()
        page.wait_for_selector("text=applied")
        assert "Accepted (AA)" in page.text_content("main")
        screenshot(page, "hl7-message-reprocessed")
    assert Order.objects.get(placer_order_number="PLC-B").patient.family_name == "BROWSERCASE"
