"""Reading in a real browser: a radiologist claims a study, reports from a template and signs
final with the password asked again; a second radiologist cannot claim it meanwhile. The
signature reaches the EMR as ORU^R01, and the report is in the study as an Encapsulated PDF."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from core.services import sync_roles
from reporting import distribution
from reporting.models import Report, ReportTemplate
from ris.hl7 import er7
from ris.hl7.models import Destination
from ris.models import RequestedProcedure
from tests import factories
from tests.archive import find, query, running_archive
from tests.browser import browser_page, log_in, screenshot
from tests.hl7util import MLLPReceiver
from tests.netutil import wait_until
from tests.personas import PASSWORD, make_personas, make_user

ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# No ORM inside `with browser_page()`: Playwright's greenlet is another context to Django,
# whose connection would outlive the test and keep the test database from being dropped.


@pytest.fixture
def emr(eager: Any) -> Iterator[MLLPReceiver]:
    """The EMR taking ORU over MLLP; the outbox and the archiving task run in-process."""
    receiver = MLLPReceiver()
    receiver.up()
    Destination.objects.create(
        name="emr", host="127.0.0.1", port=receiver.port, message_types="ORU"
    )
    yield receiver
    receiver.close()


def test_radiologist_claims_reports_from_a_template_and_signs_final(
    live_server: Any, emr: MLLPReceiver
) -> None:
    sync_roles()
    make_personas()
    make_user("rad2", "radiologist")
    ReportTemplate.objects.create(
        name="CT head",
        modality="CT",
        body_part="HEAD",
        findings="Brain parenchyma: normal attenuation.",
        impression="No acute intracranial finding.",
    )
    study = factories.received_study(factories.order(reason="Fall, headache."))
    row = f"#study-{study.pk}"
    with browser_page() as opened:
        first: Any = opened
        second = first.context.browser.new_page(viewport={"width": 1280, "height": 800})  # type: ignore[attr-defined]
        second.set_default_timeout(15_000)
        # rad2's list still offers the claim
        log_in(second, live_server.url, "rad2", wait_for="#reading-worklist")
        log_in(first, live_server.url, "rad", wait_for="#reading-worklist")

        first.click(f"{row} button:has-text('Claim')")
        first.wait_for_selector("#report-editor")
        assert first.input_value("#id_findings") == "Brain parenchyma: normal attenuation."
        assert "Fall, headache." in first.text_content("#indication")
        assert first.get_attribute("#viewer-link", "href") == f"/viewer/{study.study_instance_uid}/"
        first.fill("#id_impression", "No acute finding. Small old lacune, left basal ganglia.")
        first.locator("#id_impression").blur()  # change: saved at once
        first.wait_for_function(
            "document.getElementById('autosave-status').textContent.startsWith('Saved')"
        )
        screenshot(first, "reporting-editor")

        second.click(f"{row} button:has-text('Claim')")  # a stale page: refused with a message
        second.wait_for_selector(".messages .error")
        assert "rad is reading this study" in second.text_content(".messages")
        assert "Read by rad" in second.text_content(row)
        assert second.locator(f"{row} button:has-text('Claim')").count() == 0
        screenshot(second, "reporting-claimed-by-another")

        first.click("#open-sign-final")
        first.wait_for_selector("#sign-dialog[open]")
        first.fill("#sign-dialog input[type=password]", "not my password")
        first.click("#confirm-sign")
        first.wait_for_selector(".messages .error")
        assert "password is not correct" in first.text_content(".messages")
        assert "Draft" in first.text_content("#report-status")

        first.click("#open-sign-final")
        first.fill("#sign-dialog input[type=password]", PASSWORD)
        screenshot(first, "reporting-sign-dialog")
        first.click("#confirm-sign")
        first.wait_for_selector(".messages .success")
        assert first.locator(row).count() == 0  # read: off the worklist
        screenshot(first, "reporting-signed")

    report = Report.objects.get(study=study)
    assert report.status == Report.Status.FINAL
    assert "Small old lacune" in report.final_text
    assert report.signed_by is not None and report.signed_by.username == "rad"
    requested = RequestedProcedure.objects.get(pk=study.requested_procedure_id)
    assert requested.status == RequestedProcedure.Status.REPORTED

    # The EMR got the final report's text as ORU^R01 ...
    [received] = wait_until(lambda: emr.received or None, what="the ORU^R01")
    message = er7.parse(received.text)
    obr = message.first("OBR")
    assert obr is not None and obr.value(25) == "F"
    assert "No acute finding. Small old lacune, left basal ganglia." in [
        obx.value(5) for obx in message.all("OBX")
    ]
    # ... its PDF is kept, and the study holds it: C-FIND at IMAGE level finds it.
    version = distribution.report_version(report)
    assert distribution.pdf_path(report, version).read_bytes().startswith(b"%PDF-")
    with running_archive() as port:
        matches, status = find(
            port,
            query(
                "IMAGE",
                StudyInstanceUID=study.study_instance_uid,
                SeriesInstanceUID="",
                SOPInstanceUID="",
                SOPClassUID=ENCAPSULATED_PDF_STORAGE,
            ),
        )
    assert status.Status == 0x0000 and len(matches) == 1
