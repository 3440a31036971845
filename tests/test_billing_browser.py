"""The billing page in a real browser: an administrator posts a pending charge."""

from __future__ import annotations

from typing import Any

import pytest

from core.services import sync_roles
from ris.billing.models import Charge
from tests import factories
from tests.browser import browser_page, screenshot
from tests.hl7util import MLLPReceiver
from tests.netutil import wait_until
from tests.personas import PASSWORD, make_personas

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_admin_sees_a_pending_charge_posts_it_and_sees_it_posted(
    live_server: Any, billing_system: MLLPReceiver
) -> None:
    sync_roles()
    make_personas()
    order = factories.completed_order(
        factories.patient("Billingcase", "Robin"), referring_physician_name="REFERRER^RITA"
    )
    charge = Charge.objects.get(order=order)
    with browser_page() as page:
        page.goto(f"{live_server.url}/")
        page.fill("#id_username", "admin")
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        nav = page.get_by_role("navigation", name="Main")
        nav.get_by_role("link", name="Billing", exact=True).click()
        row = page.locator(f"#charge-{charge.pk}")
        assert "Pending" in row.text_content()
        assert "70450" in row.text_content() and "BILLINGCASE" in row.text_content()
        review = page.text_content("#review-flags")
        assert "Patient without coverage: 1" in review
        screenshot(page, "billing-pending")
        row.get_by_role("checkbox").check()
        page.get_by_role("button", name="Post selected charges").click()
        page.wait_for_selector("text=1 charge(s) posted")
        assert page.locator(f"#charge-{charge.pk}").count() == 0
        page.get_by_role("link", name="Posted (1)").click()
        posted = page.locator(f"#charge-{charge.pk}")
        assert "Posted" in posted.text_content()
        screenshot(page, "billing-posted")
        posted.get_by_role("link").first.click()
        page.wait_for_selector("#charge-facts")
        assert page.text_content("#charge-status") == "Posted"
        screenshot(page, "billing-charge-detail")
    charge.refresh_from_db()
    assert charge.status == Charge.Status.POSTED
    # The billing system got the DFT^P03 and acknowledged it.
    wait_until(lambda: billing_system.received or None, what="the DFT^P03")
    assert [r.message_type for r in billing_system.received] == ["DFT^P03"]
    assert billing_system.control_ids() == [charge.posted_control_id]
