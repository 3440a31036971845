"""Dictation in a real browser: Chromium's fake microphone records through MediaRecorder, the
recording is uploaded to the report, and it plays back from the server."""

from __future__ import annotations

import os
from typing import Any

import pytest

from core.services import sync_roles
from reporting.models import Dictation, Report
from tests import factories
from tests.browser import CHROMIUM_FLAGS, chromium_path, screenshot
from tests.personas import PASSWORD, make_personas

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# A fake microphone (a beep), and no prompt asking to allow it.
MEDIA_FLAGS = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
RECORDED_AUDIO = (
    "/Recording… [1-9][0-9]* kB/.test(document.getElementById('record-status').textContent)"
)


def test_radiologist_records_a_dictation_in_the_browser(live_server: Any) -> None:
    sync_roles()
    make_personas()
    study = factories.received_study(factories.order())
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    # No ORM inside the Playwright block: its greenlet is another context to Django.
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(), args=[*CHROMIUM_FLAGS, *MEDIA_FLAGS]
        )
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.grant_permissions(["microphone"], origin=live_server.url)
            page = context.new_page()
            page.set_default_timeout(15_000)
            page.goto(f"{live_server.url}/login/")
            page.fill("#id_username", "rad")
            page.fill("#id_password", PASSWORD)
            page.click("button[type=submit]")
            page.click(f"#study-{study.pk} button:has-text('Claim')")
            page.wait_for_selector("#report-editor")
            page.click("#record-start")
            # Wait until MediaRecorder has delivered audio (the status shows its size).
            page.wait_for_function(RECORDED_AUDIO)
            page.click("#record-stop")
            page.wait_for_selector("#dictations audio")
            assert "Recording attached" in (page.text_content("#record-status") or "")
            source = page.get_attribute("#dictations audio", "src")
            assert source
            answer = page.request.get(f"{live_server.url}{source}")
            assert answer.ok and answer.headers["content-type"].startswith("audio/")
            played = len(answer.body())
            screenshot(page, "reporting-dictation")
        finally:
            browser.close()

    dictation = Dictation.objects.get()
    assert dictation.size == played > 0
    assert dictation.content_type in ("audio/webm", "audio/ogg")
    assert dictation.report.transcription == Report.Transcription.DICTATED
