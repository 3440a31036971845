"""In a real browser: the boards load the flag of images without an order; the front desk
follows it to the queue item, the technologist sees it without the link."""

from __future__ import annotations

from typing import Any

import pytest

from core.services import sync_roles
from pacs.models import ReconciliationItem
from tests import dicom_factory
from tests.browser import browser_page, log_in, screenshot
from tests.dicomweb_util import store
from tests.personas import make_personas

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_boards_flag_images_without_an_order(live_server: Any) -> None:
    sync_roles()
    make_personas()
    study = store(dicom_factory.series(1, patient_id="NOORDER1", accession="NOSUCH"))
    item = ReconciliationItem.objects.get(study=study)
    base = live_server.url
    with browser_page() as browser:
        page: Any = browser
        log_in(page, base, "frontdesk")
        page.goto(f"{base}/ris/today/")
        row = page.locator(f'#without-order tr[data-item="{item.pk}"]')  # loaded by htmx
        assert "NOORDER1" in row.text_content()
        screenshot(page, "front-desk-images-without-order")
        row.get_by_role("link", name="Reconcile").click()
        page.wait_for_url(f"**/pacs/reconciliation/{item.pk}/")
        assert "no order found" in page.text_content("h1")
        page.get_by_role("button", name="Log out").click()
        page.wait_for_url("**/login/")

        log_in(page, base, "tech")
        page.goto(f"{base}/ris/exams/")
        row = page.locator(f'#without-order tr[data-item="{item.pk}"]')
        assert "NOSUCH" in row.text_content()
        assert row.get_by_role("link").count() == 0  # the front desk reconciles
