"""The study browser in a real browser: a radiologist searches, opens a study, sees its series."""

from __future__ import annotations

import pytest

from core.services import sync_roles
from pacs.services import ingest_instance
from tests import dicom_factory as make
from tests.browser import browser_page, screenshot
from tests.personas import PASSWORD, make_personas

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _store_study(patient_name: str, accession: str, series: int, per_series: int) -> None:
    study_uid = make.uid()
    for number in range(1, series + 1):
        for ds in make.series(
            per_series, study_uid=study_uid, patient_name=patient_name, accession=accession
        ):
            ds.SeriesNumber = number
            ds.SeriesDescription = f"Series {number}"
            ingest_instance(make.encoded(ds), transfer_syntax=str(ds.file_meta.TransferSyntaxUID))


def test_radiologist_searches_and_opens_a_study(live_server) -> None:  # type: ignore[no-untyped-def]
    sync_roles()
    make_personas()
    _store_study("Browsercase^Robin", "ACC-B1", series=2, per_series=3)
    _store_study("Othercase^Sam", "ACC-B2", series=1, per_series=1)
    with browser_page() as page:
        page.goto(f"{live_server.url}/")
        page.fill("#id_username", "rad")
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.get_by_role("link", name="Studies").click()
        page.wait_for_selector("#studies")
        assert "ACC-B2" in page.text_content("#studies tbody")
        page.fill("#id_patient_name", "browsercase")
        page.click("#study-search button[type=submit]")
        page.wait_for_url("**patient_name=browsercase**")
        rows = page.locator("#studies tbody tr")
        assert rows.count() == 1
        assert "ACC-B1" in rows.first.text_content()
        rows.first.get_by_role("link").click()
        page.wait_for_selector("#series")
        assert "2 series, 6 instances" in page.text_content("#study-facts")
        series_rows = page.locator("#series tbody tr")
        assert series_rows.count() == 2
        assert "Series 1" in series_rows.nth(0).text_content()
        assert "Series 2" in series_rows.nth(1).text_content()
        page.get_by_text("Series 2 · CT").click()  # open the second series' instances
        instances = page.get_by_text("CT Image Storage")
        assert not instances.nth(0).is_visible()  # the first series stays folded
        assert instances.nth(3).is_visible()
        assert page.get_by_role("link", name="Delete…").count() == 0
        screenshot(page, "radiologist-study")
