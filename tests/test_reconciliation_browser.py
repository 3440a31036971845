"""The reconciliation queue in a real browser: a mismatch is listed, shown side by side,
linked to its order by the front desk, and undone."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from core.services import sync_roles
from pacs.models import ReconciliationItem, Study
from ris import services as ris_services
from tests import dicom_factory, factories
from tests.archive import running_archive, store
from tests.browser import browser_page, screenshot
from tests.personas import PASSWORD, make_personas

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("eager"),  # the header rewrite runs in-process
]


def test_front_desk_links_a_mismatched_study_to_its_order_then_undoes_it(
    live_server: Any,
) -> None:
    sync_roles()
    make_personas()
    patient = factories.patient(
        "Queuecase",
        "Sam",
        birth_date=dt.date(1981, 5, 17),
        sex="M",
        identifiers=[ris_services.IdentifierInput("MRN5151", "DEMO")],
    )
    requested = factories.order(patient).requested_procedures.get()
    accession = requested.order.accession_number
    with running_archive() as port:
        store(
            port,
            dicom_factory.series(
                2, study_uid=requested.study_instance_uid, accession="", patient_id="TYPO51"
            ),
        )
    with browser_page() as browser:
        page: Any = browser
        page.goto(f"{live_server.url}/login/")
        page.fill("#id_username", "frontdesk")
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.get_by_role("navigation", name="Main").get_by_role(
            "link", name="Reconciliation"
        ).click()
        row = page.locator("tbody tr", has_text="TYPO51")
        screenshot(page, "reconciliation-queue")
        row.get_by_role("link").first.click()
        page.wait_for_selector("#reconciliation-sides")
        item_url = page.url
        sides = page.text_content("#reconciliation-sides")
        assert "TYPO51" in sides and "MRN5151" in sides
        screenshot(page, "reconciliation-item")
        page.fill("#link-order input[name=accession_number]", "A-NO-SUCH")
        page.click("#link-order button[type=submit]")
        page.wait_for_selector("#link-order .errorlist")
        page.fill("#link-order input[name=accession_number]", accession)
        page.click("#link-order button[type=submit]")
        page.wait_for_selector(f".messages >> text={accession}")
        assert page.locator("tbody tr", has_text="TYPO51").count() == 0  # off the open queue
        screenshot(page, "reconciliation-linked")
        page.goto(item_url)
        page.click("#undo-item button[type=submit]")
        page.wait_for_selector("#link-order")
    item = ReconciliationItem.objects.get()
    assert item.status == ReconciliationItem.Status.OPEN  # undone: open again
    study = Study.objects.get(study_instance_uid=requested.study_instance_uid)
    assert study.dicom_patient_id == "TYPO51" and study.requested_procedure is None
