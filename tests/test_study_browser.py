"""The study browser: search, study page, zip download, delete; who may, who may not, audited."""

from __future__ import annotations

import datetime as dt
import io
import zipfile
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import transaction
from django.urls import reverse
from pydicom import dcmread
from pydicom.dataset import Dataset

from core import roles
from core.models import AuditEvent
from pacs import views
from pacs.export import safe_name, zip_entries
from pacs.models import Instance, Series, Study
from pacs.services import delete_study, ingest_instance
from pacs.storage import default_storage
from ris.models import Order, Patient
from ris.services import grant_patient_access
from tests import dicom_factory as make
from tests import factories
from tests.personas import make_user

pytestmark = pytest.mark.django_db

BROWSERS = {"technologist", "radiologist", "admin"}  # hold pacs.view_study: every study
NARROWED = {"referring_physician", "other_physician", "patient"}  # their own studies only


def _store(datasets: list[Dataset]) -> Study:
    """Store DATASETS the way the Storage SCP does; return their study."""
    for ds in datasets:
        ingest_instance(
            make.encoded(ds),
            transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
            calling_ae="CT1",
        )
    return Study.objects.get(study_instance_uid=datasets[0].StudyInstanceUID)


def _study(
    series: int = 2, per_series: int = 3, *, modalities: tuple[str, ...] = ("CT",), **fields: Any
) -> Study:
    """A study of SERIES series (numbered 1, 2, ...) of PER_SERIES instances each."""
    study_uid = fields.pop("study_uid", None) or make.uid()
    datasets = []
    for number in range(1, series + 1):
        modality = modalities[(number - 1) % len(modalities)]
        for ds in make.series(per_series, study_uid=study_uid, modality=modality, **fields):
            ds.SeriesNumber = number
            ds.SeriesDescription = f"{modality} series {number}"
            datasets.append(ds)
    return _store(datasets)


def _identifier(patient: Patient) -> dict[str, str]:
    identifier = patient.identifiers.get()
    return {"patient_id": identifier.value, "issuer": identifier.issuer.namespace_id}


def _study_of_order(order: Order, **fields: Any) -> Study:
    """The images of ORDER, sent with the Study Instance UID the worklist gave out."""
    requested = order.requested_procedures.get()
    study = _study(
        study_uid=requested.study_instance_uid,
        accession=order.accession_number,
        **_identifier(order.patient),
        **fields,
    )
    assert study.patient == order.patient
    # Matching a study to its order is reconciliation's job (not built yet); do what it will.
    Study.objects.filter(pk=study.pk).update(requested_procedure=requested)
    study.refresh_from_db()
    return study


def _stored_files() -> set[Path]:
    return set(Path(settings.STORAGE_DIR).rglob("*.dcm"))


def _events(**filters: Any) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(**filters))


# --- Who may see what ---


PAGES = ("pacs:study-detail", "pacs:study-download")


def test_every_page_by_role_for_a_study_nobody_referred(personas, client) -> None:
    study = _study(1, 1)
    for name, user in personas.all().items():
        client.force_login(user)
        listing = client.get(reverse("pacs:study-list"))
        expected = 200 if name in BROWSERS | NARROWED else 403
        assert listing.status_code == expected, f"{name} on the list: {listing.status_code}"
        for url_name in PAGES:
            status = client.get(reverse(url_name, args=[study.pk])).status_code
            expected = 200 if name in BROWSERS else 404 if name in NARROWED else 403
            assert status == expected, f"{name} on {url_name}: {status}"
        status = client.get(reverse("pacs:study-delete", args=[study.pk])).status_code
        assert status == (200 if name == "admin" else 403), f"{name} on delete: {status}"
    assert Study.objects.filter(pk=study.pk).exists()


def test_refusals_are_audited(personas, login) -> None:
    study = _study(1, 1)
    login(personas.front_desk).get(reverse("pacs:study-list"))
    assert _events(action="denied", actor_name="frontdesk", object_type="pacs.study")
    login(personas.referring_physician).get(reverse("pacs:study-detail", args=[study.pk]))
    denied = _events(action="denied", actor_name="drref", outcome="failure")
    assert [(event.object_type, event.object_id) for event in denied] == [
        ("pacs.study", str(study.pk))
    ]
    assert denied[0].patient_key == str(study.patient_id)


def test_an_unknown_study_is_404_even_for_the_administrator(personas, login) -> None:
    client = login(personas.admin)
    for url_name in (*PAGES, "pacs:study-delete"):
        assert client.get(reverse(url_name, args=[999999])).status_code == 404


def test_referring_physician_sees_the_studies_of_their_referrals_only(personas, login) -> None:
    mine = _study_of_order(
        factories.order(referring_physician=personas.referring_physician), modalities=("MR",)
    )
    theirs = _study_of_order(factories.order(referring_physician=personas.other_physician))
    unmatched = _study(1, 1)  # not reconciled to any order
    client = login(personas.referring_physician)
    listing = client.get(reverse("pacs:study-list")).content.decode()
    assert reverse("pacs:study-detail", args=[mine.pk]) in listing
    for hidden in (theirs, unmatched):
        assert reverse("pacs:study-detail", args=[hidden.pk]) not in listing
    assert client.get(reverse("pacs:study-detail", args=[mine.pk])).status_code == 200
    download = client.get(reverse("pacs:study-download", args=[mine.pk]))
    assert download.status_code == 200
    b"".join(download.streaming_content)  # type: ignore[attr-defined]
    for hidden in (theirs, unmatched):
        assert client.get(reverse("pacs:study-detail", args=[hidden.pk])).status_code == 404
        assert client.get(reverse("pacs:study-download", args=[hidden.pk])).status_code == 404


def test_front_desk_sees_no_study_though_it_sees_every_order(personas, login) -> None:
    order = factories.order()
    _study_of_order(order)
    client = login(personas.front_desk)
    assert client.get(reverse("ris:order-detail", args=[order.pk])).status_code == 200
    assert client.get(reverse("pacs:study-list")).status_code == 403


def test_patient_sees_only_their_own_studies(personas, login) -> None:
    own, other = factories.patient(family="Selfview"), factories.patient(family="Otherview")
    grant_patient_access(own, personas.patient)
    mine = _study(1, 2, patient_name="Selfview^Pat", **_identifier(own))
    theirs = _study(1, 2, patient_name="Otherview^Pat", **_identifier(other))
    assert mine.patient == own and theirs.patient == other
    client = login(personas.patient)
    listing = client.get(reverse("pacs:study-list")).content.decode()
    assert "Pat Selfview" in listing and "Otherview" not in listing
    assert client.get(reverse("pacs:study-detail", args=[mine.pk])).status_code == 200
    assert client.get(reverse("pacs:study-detail", args=[theirs.pk])).status_code == 404
    # A patient account linked to no record finds nothing, and is told so.
    unlinked = make_user("unlinked", roles.PATIENT)
    assert "No studies found" in login(unlinked).get(reverse("pacs:study-list")).content.decode()


def test_the_navigation_shows_studies_to_those_who_may_browse(personas, client) -> None:
    for name, user in personas.all().items():
        client.force_login(user)
        page = client.get(reverse("ris:order-list")).content.decode()
        shown = f'href="{reverse("pacs:study-list")}"' in page
        assert shown == (name in BROWSERS | NARROWED), name


# --- Search ---


@pytest.fixture
def three_studies(db: None) -> dict[str, Study]:
    return {
        "smith": _study(
            1,
            1,
            patient_name="Smith^John",
            patient_id="PID-1",
            accession="ACC-100",
            study_date="20260110",
            referring="Welby^Marcus^^Dr",
            modalities=("CT",),
        ),
        "smythe": _study(
            2,
            1,
            patient_name="Smythe^Anna",
            patient_id="PID-2",
            accession="ACC-200",
            study_date="20260220",
            referring="Kildare^James",
            modalities=("MR", "SR"),
        ),
        "jones": _study(
            1,
            1,
            patient_name="Jones^Mary",
            patient_id="PID-3",
            accession="ACC-300",
            study_date="20250305",
            referring="Welby^Marcus^^Dr",
            modalities=("US",),
        ),
    }


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        ({}, {"smith", "smythe", "jones"}),
        ({"patient_name": "smith"}, {"smith"}),  # any case, the start of the name
        ({"patient_name": "SM"}, {"smith", "smythe"}),
        ({"patient_name": "anna"}, {"smythe"}),  # the start of another name component
        ({"patient_name": "sm?th*"}, {"smith", "smythe"}),  # C-FIND wildcards
        ({"patient_name": "*ONES^M*"}, {"jones"}),
        ({"patient_name": "ith"}, set()),  # a plain word does not match mid-component
        ({"patient_id": "PID-2"}, {"smythe"}),
        ({"patient_id": "PID-*"}, {"smith", "smythe", "jones"}),
        ({"accession_number": "ACC-300"}, {"jones"}),
        ({"date_from": "2026-01-01"}, {"smith", "smythe"}),
        ({"date_to": "2026-01-31"}, {"smith", "jones"}),
        ({"date_from": "2026-01-10", "date_to": "2026-01-10"}, {"smith"}),
        ({"modality": "mr"}, {"smythe"}),
        ({"modality": "SR"}, {"smythe"}),  # any series' modality (ModalitiesInStudy)
        ({"modality": "S"}, set()),  # a whole code, not a part of one
        ({"referring_physician": "welby"}, {"smith", "jones"}),
        ({"referring_physician": "marcus"}, {"smith", "jones"}),
        ({"referring_physician": "welby", "date_from": "2026-01-01"}, {"smith"}),
    ],
)
def test_search(personas, login, three_studies, criteria: dict[str, str], expected) -> None:  # type: ignore[no-untyped-def]
    page = login(personas.radiologist).get(reverse("pacs:study-list"), criteria)
    assert page.status_code == 200
    found = {study.pk for study in page.context["page"].object_list}
    assert found == {three_studies[name].pk for name in expected}


def test_search_is_audited_with_its_criteria(personas, login, three_studies) -> None:
    login(personas.radiologist).get(
        reverse("pacs:study-list"), {"patient_name": "smith", "modality": "ct"}
    )
    event = AuditEvent.objects.get(action="query", object_type="pacs.study")
    assert event.actor_name == "rad"
    assert event.detail == "1 result(s); patient_name=smith modality=CT"


@pytest.mark.parametrize(
    "criteria",
    [{"date_from": "2026-02-01", "date_to": "2026-01-01"}, {"modality": "C-T"}, {"date_to": "x"}],
)
def test_a_bad_search_is_refused_with_a_message(personas, login, criteria) -> None:  # type: ignore[no-untyped-def]
    response = login(personas.radiologist).get(reverse("pacs:study-list"), criteria)
    assert response.status_code == 400
    assert 'role="alert"' in response.content.decode()


def test_the_list_is_paginated_newest_first(personas, login, monkeypatch, three_studies) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(views, "PAGE_SIZE", 2)
    client = login(personas.radiologist)
    first = client.get(reverse("pacs:study-list"))
    assert [s.pk for s in first.context["page"]] == [
        three_studies["smythe"].pk,
        three_studies["smith"].pk,
    ]
    assert "Page 1 of 2" in first.content.decode()
    second = client.get(reverse("pacs:study-list"), {"page": 2})
    assert [s.pk for s in second.context["page"]] == [three_studies["jones"].pk]


@pytest.mark.parametrize("persona", ["radiologist", "referring_physician"])
def test_list_query_count_does_not_grow_with_studies(
    personas, login, django_assert_max_num_queries, persona: str
) -> None:
    user = getattr(personas, persona)
    client = login(user)

    def make_studies(count: int) -> None:
        for _ in range(count):
            _study_of_order(factories.order(referring_physician=personas.referring_physician))

    make_studies(2)
    client.get(reverse("pacs:study-list"))  # warm the session and permission caches
    with django_assert_max_num_queries(8):
        first = client.get(reverse("pacs:study-list"), {"patient_name": "test*"})
    make_studies(8)
    with django_assert_max_num_queries(8):
        second = client.get(reverse("pacs:study-list"), {"patient_name": "test*"})
    assert first.context["page"].paginator.count == 2
    assert second.context["page"].paginator.count == 10


# --- The study page ---


def test_study_page_shows_patient_study_series_and_instances(personas, login) -> None:
    study_uid = make.uid()
    implicit = make.series(
        2,
        study_uid=study_uid,
        patient_name="Pagecase^Robin",
        transfer_syntax=make.ImplicitVRLittleEndian,
    )
    explicit = make.series(3, study_uid=study_uid, patient_name="Pagecase^Robin")
    for ds in explicit:
        ds.SeriesNumber = 2
    study = _store([*implicit, *explicit])
    response = login(personas.radiologist).get(reverse("pacs:study-detail", args=[study.pk]))
    assert response.status_code == 200
    content = response.content.decode()
    assert "PAGECASE, Robin" in content
    assert "2 series, 5 instances" in content
    assert content.count("CT Image Storage") == 5
    assert content.count("Implicit VR Little Endian") == 2
    assert content.count("Explicit VR Little Endian") == 3
    for ds in (*implicit, *explicit):
        assert ds.SOPInstanceUID in content
    series = response.context["series_list"]
    assert [s.series_number for s in series] == [1, 2]
    assert [s.number_of_instances for s in series] == [2, 3]
    assert [i.instance_number for i in series[1].instances.all()] == [1, 2, 3]
    assert sum(s.size_bytes for s in series) == study.size_bytes > 0
    event = AuditEvent.objects.get(action="view", object_type="pacs.study")
    assert (event.actor_name, event.object_id) == ("rad", str(study.pk))
    assert event.patient_key == str(study.patient_id)


def test_study_page_links_the_order_to_those_who_may_open_it(personas, login) -> None:
    order = factories.order(referring_physician=personas.referring_physician)
    study = _study_of_order(order)
    url = reverse("pacs:study-detail", args=[study.pk])
    order_url = reverse("ris:order-detail", args=[order.pk])
    assert order_url in login(personas.referring_physician).get(url).content.decode()
    assert order_url in login(personas.radiologist).get(url).content.decode()
    delete_url = reverse("pacs:study-delete", args=[study.pk])
    assert delete_url not in login(personas.radiologist).get(url).content.decode()
    assert delete_url in login(personas.admin).get(url).content.decode()


def test_study_page_and_download_query_counts_do_not_grow_with_the_study(
    personas, login, django_assert_max_num_queries
) -> None:
    small, large = _study(1, 1), _study(4, 5)
    client = login(personas.radiologist)
    client.get(reverse("pacs:study-detail", args=[small.pk]))
    for study in (small, large):
        with django_assert_max_num_queries(9):
            response = client.get(reverse("pacs:study-detail", args=[study.pk]))
        assert len(response.context["series_list"]) == study.number_of_series
        with django_assert_max_num_queries(7):
            download = client.get(reverse("pacs:study-download", args=[study.pk]))
            archive = zipfile.ZipFile(io.BytesIO(b"".join(download.streaming_content)))
        assert len(archive.namelist()) == study.number_of_instances


# --- Download ---


def _unzip(response: Any) -> zipfile.ZipFile:
    assert response.streaming
    chunks = list(response.streaming_content)
    return zipfile.ZipFile(io.BytesIO(b"".join(chunks)))


def test_download_is_a_zip_of_the_stored_files(personas, login) -> None:
    study = _study(2, 3, accession="ACC/77", study_date="20260301", modalities=("CT", "MR"))
    response = login(personas.technologist).get(reverse("pacs:study-download", args=[study.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"] == 'attachment; filename="ACC_77_20260301.zip"'
    archive = _unzip(response)
    assert archive.testzip() is None
    names = archive.namelist()
    assert names == [
        f"ACC_77_20260301/{folder}/I{number:05d}.dcm"
        for folder in ("S001_CT_CT_series_1", "S002_MR_MR_series_2")
        for number in (1, 2, 3)
    ]
    storage = default_storage()
    instances = Instance.objects.filter(series__study=study).select_related("series")
    by_uid = {instance.sop_instance_uid: instance for instance in instances}
    for name in names:
        data = archive.read(name)
        ds = dcmread(io.BytesIO(data))
        stored = by_uid.pop(ds.SOPInstanceUID)
        assert data == storage.path(stored.file_path).read_bytes()
        assert name.endswith(f"I{stored.instance_number:05d}.dcm")
        assert f"S{stored.series.series_number:03d}_" in name
    assert by_uid == {}  # every instance, once
    event = AuditEvent.objects.get(action="export")
    assert (event.actor_name, event.object_id, event.outcome) == ("tech", str(study.pk), "success")
    assert event.detail.startswith("zip, 6 instance(s)")


def test_download_streams_a_piece_at_a_time(personas, login, monkeypatch) -> None:
    from pacs import export

    monkeypatch.setattr(export, "CHUNK_SIZE", 1024)
    study = _study(1, 3, size=64)  # 8 KB of pixels per instance
    response = login(personas.radiologist).get(reverse("pacs:study-download", args=[study.pk]))
    assert not hasattr(response, "content")  # a StreamingHttpResponse: never built whole
    chunks = list(response.streaming_content)
    assert len(chunks) > 3
    assert max(len(chunk) for chunk in chunks) < 8 * 1024
    assert len(zipfile.ZipFile(io.BytesIO(b"".join(chunks))).namelist()) == 3


def test_zip_names_are_safe_and_unique() -> None:
    assert safe_name("Thorax / Abdomen  (w/ KM)", "x") == "Thorax_Abdomen_w_KM"
    assert safe_name("Ästhetik", "x") == "sthetik"
    assert safe_name("///", "fallback") == "fallback"
    study = Study(accession_number="", dicom_patient_id="P 1", study_date=None)
    one = Series(pk=1, series_number=1, modality="CT", series_description="Axial")
    same_number = Series(pk=2, series_number=1, modality="CT", series_description="Axial")
    unnumbered = Series(pk=3, series_number=None, modality="SR", series_description="")
    moment = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    instances = [
        Instance(series=one, instance_number=1, file_path="a", received_at=moment),
        Instance(series=one, instance_number=1, file_path="b", received_at=moment),
        Instance(series=same_number, instance_number=None, file_path="c", received_at=moment),
        Instance(series=unnumbered, instance_number=7, file_path="d", received_at=moment),
    ]
    assert [entry.name for entry in zip_entries(study, instances)] == [
        "P_1/S001_CT_Axial/I00001.dcm",
        "P_1/S001_CT_Axial/I00001_2.dcm",
        "P_1/S001_CT_Axial_2/I00001.dcm",
        "P_1/S_SR/I00007.dcm",
    ]


def test_download_with_a_file_missing_is_refused_and_audited(personas, login) -> None:
    study = _study(1, 2)
    default_storage().path(Instance.objects.filter(series__study=study)[0].file_path).unlink()
    response = login(personas.radiologist).get(reverse("pacs:study-download", args=[study.pk]))
    assert response.status_code == 500
    assert "1 of this study's files are missing" in response.content.decode()
    event = AuditEvent.objects.get(action="export")
    assert event.outcome == "failure"


# --- Delete ---


def test_admin_deletes_a_study_with_its_files(
    personas, login, django_capture_on_commit_callbacks
) -> None:
    kept = _study(1, 2)
    kept_files = _stored_files()
    doomed = _study(2, 3)
    assert len(_stored_files()) == 8
    client = login(personas.admin)
    confirm = client.get(reverse("pacs:study-delete", args=[doomed.pk]))
    assert confirm.status_code == 200
    assert doomed.study_instance_uid in confirm.content.decode()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client.post(
            reverse("pacs:study-delete", args=[doomed.pk]), {"reason": "sent to the wrong patient"}
        )
    assert len(callbacks) == 1
    assert response.status_code == 302
    assert response["Location"] == reverse("pacs:study-list")
    assert not Study.objects.filter(pk=doomed.pk).exists()
    assert not Series.objects.filter(study_id=doomed.pk).exists()
    assert Instance.objects.count() == 2
    assert _stored_files() == kept_files
    assert Study.objects.get(pk=kept.pk).number_of_instances == 2
    # The study's folders go with its files.
    assert not any(
        doomed.study_instance_uid in str(path) for path in Path(settings.STORAGE_DIR).rglob("*")
    )
    event = AuditEvent.objects.get(action="delete")
    assert (event.actor_name, event.object_type, event.object_id) == (
        "admin",
        "pacs.study",
        str(doomed.pk),
    )
    assert event.patient_key == str(doomed.patient_id)
    assert "6 instance(s)" in event.detail and "sent to the wrong patient" in event.detail
    followed = client.get(response["Location"])
    assert "deleted with its 6 instance(s)" in followed.content.decode()


@pytest.mark.parametrize(
    "persona",
    [
        "front_desk",
        "technologist",
        "radiologist",
        "transcriptionist",
        "referring_physician",
        "patient",
        "outsider",
    ],
)
def test_nobody_but_an_administrator_may_delete(
    personas, login, django_capture_on_commit_callbacks, persona: str
) -> None:
    user = getattr(personas, persona)
    study = _study_of_order(factories.order(referring_physician=personas.referring_physician))
    if persona == "patient":
        grant_patient_access(study.patient, user)
    files = _stored_files()
    with django_capture_on_commit_callbacks(execute=True):
        response = login(user).post(reverse("pacs:study-delete", args=[study.pk]))
    assert response.status_code == 403
    assert Study.objects.filter(pk=study.pk).exists()
    assert Instance.objects.filter(series__study=study).count() == 6
    assert _stored_files() == files
    assert not _events(action="delete")
    denied = _events(action="denied", actor_name=user.username, outcome="failure")
    assert [(event.object_type, event.object_id) for event in denied] == [
        ("pacs.study", str(study.pk))
    ]


def test_a_deletion_that_does_not_commit_keeps_rows_and_files(
    personas, django_capture_on_commit_callbacks
) -> None:
    study = _study(1, 3)
    files = _stored_files()
    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        assert delete_study(study, actor=personas.admin) == 3
        raise RuntimeError("the commit fails")
    assert callbacks == []  # the file removal never ran
    assert Instance.objects.filter(series__study=study).count() == 3
    assert _stored_files() == files
    assert all(path.stat().st_size > 0 for path in files)


def test_a_file_stored_again_after_the_deletion_is_spared(
    personas, django_capture_on_commit_callbacks
) -> None:
    datasets = make.series(2)
    study = _store(datasets)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        delete_study(study, actor=personas.admin)
    again = _store(datasets[:1])  # the modality sends one instance again before the removal ran
    for callback in callbacks:
        callback()
    kept = Instance.objects.get(series__study=again)
    assert _stored_files() == {default_storage().path(kept.file_path)}


def test_page_filters_read_dicom_values() -> None:
    from pacs.templatetags.archive import dicom_time, modalities, uid_name

    assert dicom_time("101500.123") == "10:15:00"
    assert dicom_time("0930") == "09:30"
    assert dicom_time("garbage") == "garbage"
    assert uid_name("1.2.840.10008.5.1.4.1.1.2") == "CT Image Storage"
    assert uid_name("1.2.840.10008.1.2.4.50") == "JPEG Baseline (Process 1)"
    assert uid_name("1.2.3.4") == "1.2.3.4"
    assert modalities("\\CT\\SR\\") == "CT, SR"


def test_deleting_a_study_twice_is_refused(personas, django_capture_on_commit_callbacks) -> None:
    study = _study(1, 1)
    with django_capture_on_commit_callbacks(execute=True):
        assert delete_study(study, actor=personas.admin) == 1
    with pytest.raises(Study.DoesNotExist):
        delete_study(study, actor=personas.admin)
    assert len(_events(action="delete")) == 1
    assert _stored_files() == set()
