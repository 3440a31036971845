"""The viewer page: who may open it, what it is told, audited, and its query count."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core.models import AuditEvent
from pacs.models import Study
from tests import dicom_factory as make
from tests import factories
from tests.dicomweb_util import store

pytestmark = pytest.mark.django_db

BROWSERS = {"technologist", "radiologist", "admin"}
NARROWED = {"referring_physician", "other_physician", "patient"}  # none of theirs here
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR: no pixels


def _config(response: Any) -> dict[str, Any]:
    assert response.status_code == 200
    text = response.content.decode()
    start = text.index('<script id="viewer-config" type="application/json">')
    body = text[start:].split(">", 1)[1].split("</script>", 1)[0]
    return json.loads(body)


def _study(patient_id: str = "VP1", date: str = "20260301", series: int = 1) -> Study:
    study_uid = make.uid()
    for number in range(1, series + 1):
        datasets = make.series(2, study_uid=study_uid, patient_id=patient_id, study_date=date)
        for ds in datasets:
            ds.SeriesNumber = number
        store(datasets)
    return Study.objects.get(study_instance_uid=study_uid)


def test_every_persona(personas, client) -> None:
    study = _study()
    url = f"/viewer/{study.study_instance_uid}/"
    for name, user in personas.all().items():
        client.force_login(user)
        status = client.get(url).status_code
        expected = 200 if name in BROWSERS else 404 if name in NARROWED else 403
        assert status == expected, name
    client.logout()
    assert client.get(url).status_code == 302  # to the login page
    events = AuditEvent.objects.filter(object_id=str(study.pk))
    assert events.filter(actor_name="rad", action="view", detail="viewer").exists()
    assert events.filter(actor_name="drref", action="denied", outcome="failure").exists()
    assert AuditEvent.objects.filter(actor_name="frontdesk", action="denied").exists()
    assert client.get("/viewer/1.2.3/").status_code == 302


def test_referring_physician_opens_their_referral(personas, client) -> None:
    order = factories.order(referring_physician=personas.referring_physician)
    requested = order.requested_procedures.get()
    study = _study()
    Study.objects.filter(pk=study.pk).update(requested_procedure=requested)
    client.force_login(personas.referring_physician)
    assert client.get(f"/viewer/{study.study_instance_uid}/").status_code == 200
    client.force_login(personas.other_physician)
    assert client.get(f"/viewer/{study.study_instance_uid}/").status_code == 404


def test_the_page_lists_image_series_and_priors(personas, client) -> None:
    study = _study(series=2)
    report = make.ct_instance(study_uid=study.study_instance_uid, patient_id="VP1")
    report.SOPClassUID = SR_CLASS
    report.file_meta.MediaStorageSOPClassUID = SR_CLASS
    report.Modality = "SR"
    report.SeriesNumber = 9
    for keyword in ("Rows", "Columns", "PixelData", "BitsAllocated", "BitsStored", "HighBit"):
        del report[keyword]
    store([report])
    prior = _study(date="20250101")
    _study(patient_id="SOMEONE-ELSE")
    client.force_login(personas.radiologist)
    config = _config(client.get(f"/viewer/{study.study_instance_uid}/"))
    assert config["dicomweb"] == "/dicomweb"
    assert config["study"]["uid"] == study.study_instance_uid
    assert [item["number"] for item in config["series"]] == [1, 2]  # not the SR
    assert [item["images"] for item in config["series"]] == [2, 2]
    assert [item["uid"] for item in config["priors"]] == [prior.study_instance_uid]
    assert config["priors"][0]["url"] == f"/viewer/{prior.study_instance_uid}/"
    assert len(config["priors"][0]["series"]) == 1
    assert config["reportUrl"] == f"/reporting/studies/{study.pk}/report-panel/"
    page = client.get(f"/viewer/{study.study_instance_uid}/").content.decode()
    assert 'id="viewer-report"' in page
    assert f"/dicomweb/studies/{study.study_instance_uid}/series/" in page  # thumbnails


def test_query_count_does_not_grow_with_priors(personas, client) -> None:
    study = _study()
    _study(date="20190101")
    client.force_login(personas.radiologist)
    url = f"/viewer/{study.study_instance_uid}/"
    client.get(url)
    with CaptureQueriesContext(connection) as one:
        client.get(url)
    for year in range(2020, 2024):
        _study(date=f"{year}0101", series=2)
    with CaptureQueriesContext(connection) as five:
        config = _config(client.get(url))
    assert len(config["priors"]) == 5
    assert len(five.captured_queries) == len(one.captured_queries)


def test_study_page_links_to_the_viewer(personas, client) -> None:
    study = _study()
    client.force_login(personas.radiologist)
    page = client.get(f"/pacs/studies/{study.pk}/").content.decode()
    assert f'href="/viewer/{study.study_instance_uid}/"' in page
