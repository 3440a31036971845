"""DICOMweb (PS3.18): QIDO-RS, WADO-RS, STOW-RS and WADO-URI; who may, who may not, audited."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import numpy
import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

from core.models import AuditEvent
from pacs.dicomweb import wado
from pacs.dicomweb.multipart import parse_media_type
from pacs.models import Instance, Study
from pacs.storage import default_storage
from tests import dicom_factory as make
from tests import factories
from tests.dicomweb_util import STOW_TYPE, basic, dataset, multipart_body, part10, parts, store

pytestmark = pytest.mark.django_db

BROWSERS = {"technologist", "radiologist", "admin"}  # every study
NARROWED = {"referring_physician", "other_physician", "patient"}  # their own studies only
STORERS = {"technologist", "admin"}
ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _json(response: Any) -> Any:
    assert response["Content-Type"] == "application/dicom+json", response.content[:200]
    return json.loads(response.content)


def _content(response: Any) -> bytes:
    if response.streaming:
        return b"".join(response.streaming_content)
    return bytes(response.content)


def _part_type(content_type: str) -> tuple[str, str]:
    """A part's media type and transfer-syntax parameter."""
    media = parse_media_type(content_type)
    return media.type, media.parameters.get("transfer-syntax", "")


def _uids(results: list[dict[str, Any]], tag: str = "0020000D") -> list[str]:
    return [result[tag]["Value"][0] for result in results]


def _three_studies() -> tuple[Study, Study, Study]:
    smith = store(make.series(2, patient_name="Smith^Anna", patient_id="P1", study_date="20260110"))
    jones = store(
        make.series(
            1, patient_name="Jones^Bo", patient_id="P2", study_date="20260120", modality="MR"
        )
    )
    smythe = store(make.series(1, patient_name="Smythe^Cy", patient_id="P3", study_date="20260201"))
    return smith, jones, smythe


# --- QIDO-RS ---


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", {"smith", "jones", "smythe"}),
        ("PatientName=SM*", {"smith", "smythe"}),
        ("PatientName=smith^anna", {"smith"}),
        ("00100020=P2", {"jones"}),
        ("StudyDate=20260115-20260131", {"jones"}),
        ("StudyDate=20260120-", {"jones", "smythe"}),
        ("ModalitiesInStudy=MR", {"jones"}),
        ("PatientID=P1&fuzzymatching=true", {"smith"}),
    ],
)
def test_qido_studies_match_as_c_find_does(personas, client, query: str, expected: set) -> None:
    studies = dict(zip(("smith", "jones", "smythe"), _three_studies(), strict=True))
    response = client.get(f"/dicomweb/studies?{query}", **basic(personas.radiologist))
    assert response.status_code == 200
    found = set(_uids(_json(response)))
    assert found == {studies[name].study_instance_uid for name in expected}
    if "fuzzymatching" in query:
        assert "fuzzymatching parameter is not supported" in response["Warning"]


def test_qido_uid_list_matching(personas, client) -> None:
    smith, jones, _ = _three_studies()
    uids = f"{smith.study_instance_uid}\\{jones.study_instance_uid}"
    response = client.get("/dicomweb/studies", {"StudyInstanceUID": uids}, **basic(personas.admin))
    assert set(_uids(_json(response))) == {smith.study_instance_uid, jones.study_instance_uid}


def test_qido_default_attributes_and_includefield(personas, client) -> None:
    smith, _, _ = _three_studies()
    auth = basic(personas.radiologist)
    [result] = _json(client.get("/dicomweb/studies?PatientID=P1", **auth))
    assert result["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Smith^Anna"}]}
    assert result["00080061"] == {"vr": "CS", "Value": ["CT"]}
    assert result["00201208"]["Value"] == [2]  # NumberOfStudyRelatedInstances
    assert result["00081190"]["Value"][0].endswith(f"/dicomweb/studies/{smith.study_instance_uid}")
    assert "00081030" not in result  # StudyDescription: only when asked for
    [asked] = _json(
        client.get("/dicomweb/studies?PatientID=P1&includefield=StudyDescription", **auth)
    )
    assert asked["00081030"]["Value"] == ["CT HEAD"]
    [by_tag] = _json(client.get("/dicomweb/studies?PatientID=P1&includefield=00081030", **auth))
    assert by_tag["00081030"]["Value"] == ["CT HEAD"]
    [everything] = _json(client.get("/dicomweb/studies?PatientID=P1&includefield=all", **auth))
    assert everything["00081030"]["Value"] == ["CT HEAD"]
    assert everything["00100030"]["Value"] == ["19700101"]  # PatientBirthDate
    assert "0008103E" not in everything  # SeriesDescription: below the study level
    # An attribute the index does not hold is returned empty, not refused.
    [unknown] = _json(client.get("/dicomweb/studies?PatientID=P1&includefield=00081080", **auth))
    assert unknown["00081080"] == {"vr": "LO"}


def test_qido_limit_and_offset(personas, client) -> None:
    dates = ["20260101", "20260102", "20260103", "20260104", "20260105"]
    uids = [store(make.series(1, study_date=date)).study_instance_uid for date in dates]
    auth = basic(personas.radiologist)
    response = client.get("/dicomweb/studies?limit=2&offset=1", **auth)
    assert _uids(_json(response)) == uids[1:3]
    assert "additional results" in response["Warning"]
    last = client.get("/dicomweb/studies?limit=2&offset=3", **auth)
    assert _uids(_json(last)) == uids[3:5]
    assert not last.has_header("Warning")
    assert _json(client.get("/dicomweb/studies?offset=10", **auth)) == []


def test_qido_series_and_instances(personas, client) -> None:
    ct = make.series(3, patient_id="P9")
    study_uid = ct[0].StudyInstanceUID
    mr = make.series(2, study_uid=study_uid, modality="MR", patient_id="P9")
    for number, ds in enumerate(mr, start=1):
        ds.SeriesNumber = 2
        ds.InstanceNumber = number
    store(ct + mr)
    store(make.series(1, modality="MR"))  # another study
    auth = basic(personas.technologist)

    series = _json(client.get(f"/dicomweb/studies/{study_uid}/series", **auth))
    assert _uids(series, "0020000E") == [ct[0].SeriesInstanceUID, mr[0].SeriesInstanceUID]
    assert series[1]["00080060"]["Value"] == ["MR"]
    assert series[1]["00201209"]["Value"] == [2]  # NumberOfSeriesRelatedInstances
    assert "00100010" not in series[0]  # patient attributes: not in a study's series list
    only_mr = _json(client.get(f"/dicomweb/studies/{study_uid}/series?Modality=MR", **auth))
    assert _uids(only_mr, "0020000E") == [mr[0].SeriesInstanceUID]

    url = f"/dicomweb/studies/{study_uid}/series/{mr[0].SeriesInstanceUID}/instances"
    instances = _json(client.get(url, **auth))
    assert _uids(instances, "00080018") == [ds.SOPInstanceUID for ds in mr]
    assert instances[0]["00280010"]["Value"] == [32]  # Rows
    assert instances[0]["00081190"]["Value"][0].endswith(
        f"/series/{mr[0].SeriesInstanceUID}/instances/{mr[0].SOPInstanceUID}"
    )
    numbered = _json(client.get(f"{url}?InstanceNumber=2", **auth))
    assert _uids(numbered, "00080018") == [mr[1].SOPInstanceUID]

    all_mr = _json(client.get("/dicomweb/series?Modality=MR", **auth))
    assert len(all_mr) == 2
    assert all("00100020" in item for item in all_mr)  # outside a study: study attributes too
    one = _json(client.get(f"/dicomweb/instances?SOPInstanceUID={ct[1].SOPInstanceUID}", **auth))
    assert _uids(one, "00080018") == [ct[1].SOPInstanceUID]
    assert one[0]["00100020"]["Value"] == ["P9"]
    in_study = _json(client.get(f"/dicomweb/studies/{study_uid}/instances", **auth))
    assert len(in_study) == 5


@pytest.mark.parametrize(
    "query",
    [
        "limit=ten",
        "offset=-1",
        "NoSuchKeyword=1",
        "FFFF0000=1",
        "StudyDate=2026-01-xx",
        "SeriesInstanceUID=1.2.3",  # below the study level
        "fuzzymatching=maybe",
        "PatientID=A&PatientID=B",
        "00400275.00401001=X",  # inside a sequence
        "includefield=NotAKeyword",
    ],
)
def test_qido_bad_parameters_answer_400(personas, client, query: str) -> None:
    response = client.get(f"/dicomweb/studies?{query}", **basic(personas.radiologist))
    assert response.status_code == 400
    assert response.content.strip()  # with a message


def test_qido_answers_from_the_index_in_constant_queries(
    personas, client, django_assert_max_num_queries
) -> None:
    auth = basic(personas.radiologist)
    store(make.series(1))

    def count(url: str) -> int:
        with CaptureQueriesContext(connection) as context:
            assert client.get(url, **auth).status_code == 200
        return len(context.captured_queries)

    urls = ("/dicomweb/studies", "/dicomweb/series", "/dicomweb/instances")
    few = [count(url) for url in urls]
    for _ in range(6):
        store(make.series(3))
    # No file is opened: the answers come from the index even with the files gone.
    shutil.rmtree(Path(settings.STORAGE_DIR))
    assert [count(url) for url in urls] == few
    with django_assert_max_num_queries(8):
        response = client.get("/dicomweb/instances?includefield=all", **auth)
    assert len(_json(response)) == 19


# --- WADO-RS ---


@pytest.mark.parametrize(
    "accept",
    [
        ANY_SYNTAX,
        # Stored in the default syntax (Explicit VR Little Endian): no need to rewrite it.
        'multipart/related; type="application/dicom"',
        f'multipart/related; type="application/dicom"; transfer-syntax={ExplicitVRLittleEndian}',
        "*/*",
        None,
    ],
)
def test_wado_rs_sends_the_stored_files(personas, client, accept: str | None) -> None:
    datasets = make.series(3)
    study = store(datasets)
    auth = basic(personas.radiologist)
    headers = {"HTTP_ACCEPT": accept} if accept else {}
    response = client.get(f"/dicomweb/studies/{study.study_instance_uid}", **headers, **auth)
    assert response.status_code == 200
    assert response.streaming
    received = parts(response["Content-Type"], _content(response))
    storage = default_storage()
    stored = {
        i.sop_instance_uid: storage.path(i.file_path).read_bytes() for i in Instance.objects.all()
    }
    assert len(received) == 3
    for (content_type, body), ds in zip(received, datasets, strict=True):
        assert _part_type(content_type) == ("application/dicom", ExplicitVRLittleEndian)
        assert body == stored[ds.SOPInstanceUID]  # byte for byte
        got = dataset(body)
        assert got == ds  # the same dataset as sent
        assert got.PixelData == ds.PixelData


def test_wado_rs_series_and_instance(personas, client) -> None:
    datasets = make.series(2)
    other_series = make.series(1, study_uid=datasets[0].StudyInstanceUID)
    store(datasets + other_series)
    auth = basic(personas.technologist)
    base = f"/dicomweb/studies/{datasets[0].StudyInstanceUID}/series/"
    series = client.get(base + datasets[0].SeriesInstanceUID, **auth)
    received = parts(series["Content-Type"], _content(series))
    assert [dataset(body).SOPInstanceUID for _, body in received] == [
        ds.SOPInstanceUID for ds in datasets
    ]
    url = f"{base}{datasets[0].SeriesInstanceUID}/instances/{datasets[1].SOPInstanceUID}"
    [(_, body)] = parts(*_typed(client.get(url, **auth)))
    assert dataset(body) == datasets[1]
    missing = client.get(f"{base}{datasets[0].SeriesInstanceUID}/instances/1.2.3", **auth)
    assert missing.status_code == 404


def _typed(response: Any) -> tuple[str, bytes]:
    assert response.status_code == 200
    return response["Content-Type"], _content(response)


def _raw_values(body: bytes) -> dict[Any, bytes]:
    """Each top-level element's value as encoded (pydicom leaves them raw until used)."""
    ds = dataset(body)
    # Its keys, not the Dataset itself: iterating over a Dataset decodes every value.
    return {tag: ds.get_item(tag).value for tag in ds.keys()}  # noqa: SIM118


@pytest.mark.parametrize(
    "accept",
    [
        None,  # PS3.18 8.7.3, Table 8.7.3-2: the default is Explicit VR Little Endian
        "*/*",
        "multipart/related",
        'multipart/related; type="application/dicom"',
        # PS3.18 8.7.3: Implicit VR Little Endian is not used on the web, even when any will do.
        ANY_SYNTAX,
    ],
)
def test_wado_rs_rewrites_implicit_vr_as_explicit_vr_little_endian(
    personas, client, accept: str | None
) -> None:
    ds = make.ct_instance(transfer_syntax=ImplicitVRLittleEndian)
    ds.private_block(0x0009, "RISPACS TEST", create=True).add_new(0x01, "OB", b"\x01\x02\x03\x04")
    ds.SmallestImagePixelValue = 7  # US or SS: the VR comes from PixelRepresentation
    study = store([ds])
    stored = default_storage().path(Instance.objects.get().file_path).read_bytes()
    auth = basic(personas.radiologist)
    headers = {"HTTP_ACCEPT": accept} if accept else {}
    response = client.get(f"/dicomweb/studies/{study.study_instance_uid}", **headers, **auth)
    [(content_type, body)] = parts(*_typed(response))
    assert _part_type(content_type) == ("application/dicom", ExplicitVRLittleEndian)
    got = dataset(body)
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert got.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert got["SmallestImagePixelValue"].VR == "US"
    # Only the encoding changes: every value, to the byte, is the stored one (the private
    # one, whose VR the implicit file does not say, as UN).
    assert _raw_values(body) == _raw_values(stored)
    assert got[0x00091001].VR == "UN"
    assert got == dataset(stored)


def test_wado_rs_named_syntaxes(personas, client) -> None:
    ds = make.ct_instance(transfer_syntax=ImplicitVRLittleEndian)
    study = store([ds])
    url = f"/dicomweb/studies/{study.study_instance_uid}"
    auth = basic(personas.radiologist)
    # A syntax it cannot be made in: 406 naming what it can be sent in.
    for syntax in (JPEGBaseline8Bit, ImplicitVRLittleEndian):  # the latter: PS3.18 8.7.3
        refused = client.get(url, HTTP_ACCEPT=f"{ANY_SYNTAX[:-1]}{syntax}", **auth)
        assert refused.status_code == 406, syntax
        assert f"can be sent as {ExplicitVRLittleEndian}" in refused.content.decode()
    assert client.get(url, HTTP_ACCEPT="image/png", **auth).status_code == 406
    # Refused at q=0, then the next one asked for.
    either = f"{ANY_SYNTAX[:-1]}{JPEGBaseline8Bit}, {ANY_SYNTAX}; q=0, */*; q=0.5"
    [(content_type, _)] = parts(*_typed(client.get(url, HTTP_ACCEPT=either, **auth)))
    assert _part_type(content_type) == ("application/dicom", ExplicitVRLittleEndian)


def test_wado_rs_metadata_and_bulk_data(personas, client) -> None:
    datasets = make.series(2)
    document = bytes(range(256)) * 8
    datasets[0].EncapsulatedDocument = document  # a large top-level value, not pixel data
    item = Dataset()
    item.EncapsulatedDocument = document
    datasets[0].ContentSequence = [item]  # inside a sequence: inline
    study = store(datasets)
    auth = basic(personas.radiologist)
    response = client.get(f"/dicomweb/studies/{study.study_instance_uid}/metadata", **auth)
    assert response.status_code == 200
    metadata = json.loads(_content(response))
    assert response["Content-Type"] == "application/dicom+json"
    assert [item["00080018"]["Value"][0] for item in metadata] == [
        ds.SOPInstanceUID for ds in datasets
    ]
    first = metadata[0]
    assert first["00100010"]["Value"] == [{"Alphabetic": "Testperson^Alex"}]
    pixel = first["7FE00010"]
    assert "InlineBinary" not in pixel
    assert pixel["vr"] == "OW"
    bulk = client.get(pixel["BulkDataURI"], **auth)
    [(content_type, body)] = parts(*_typed(bulk))
    assert content_type == "application/octet-stream"
    assert body == datasets[0].PixelData
    document_uri = first["00420011"]["BulkDataURI"]
    assert document_uri.endswith(f"/instances/{datasets[0].SOPInstanceUID}/bulkdata/00420011")
    [(_, body)] = parts(*_typed(client.get(document_uri, **auth)))
    assert body == document
    nested = first["0040A730"]["Value"][0]["00420011"]
    assert base64.b64decode(nested["InlineBinary"]) == document
    instance_url = (
        f"/dicomweb/studies/{study.study_instance_uid}/series/{datasets[1].SeriesInstanceUID}"
        f"/instances/{datasets[1].SOPInstanceUID}/metadata"
    )
    [one] = json.loads(_content(client.get(instance_url, **auth)))
    assert one["00200013"]["Value"] == [2]


# --- WADO-URI ---


def _wado_uri_query(ds: Any) -> dict[str, str]:
    """A WADO-URI request for DS as a DICOM file (PS3.18 9.4)."""
    return {
        "requestType": "WADO",
        "studyUID": ds.StudyInstanceUID,
        "seriesUID": ds.SeriesInstanceUID,
        "objectUID": ds.SOPInstanceUID,
        "contentType": "application/dicom",
    }


def test_wado_uri(personas, client) -> None:
    ds = make.ct_instance()
    store([ds])
    query = _wado_uri_query(ds)
    auth = basic(personas.radiologist)
    response = client.get("/dicomweb/wado", query, **auth)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/dicom"
    assert dataset(_content(response)) == ds
    assert (
        client.get("/dicomweb/wado", {**query, "contentType": "image/jpeg"}, **auth).status_code
        == 406
    )
    assert client.get("/dicomweb/wado", {**query, "requestType": "X"}, **auth).status_code == 400
    assert client.get("/dicomweb/wado", {**query, "objectUID": "1.2"}, **auth).status_code == 404
    assert AuditEvent.objects.filter(action="export", detail__startswith="WADO-URI").count() == 1


def test_wado_uri_default_is_explicit_vr_little_endian(personas, client) -> None:
    """PS3.18 9.4.2.4: with no transferSyntax, Explicit VR Little Endian."""
    ds = make.ct_instance(transfer_syntax=ImplicitVRLittleEndian)
    store([ds])
    query = _wado_uri_query(ds)
    auth = basic(personas.radiologist)
    got = dataset(_content(client.get("/dicomweb/wado", query, **auth)))
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert got == ds
    implicit = {**query, "transferSyntax": str(ImplicitVRLittleEndian)}
    assert client.get("/dicomweb/wado", implicit, **auth).status_code == 406  # PS3.18 8.7.3


# --- STOW-RS ---


def test_stow_stores_and_reports_a_bad_part(personas, client) -> None:
    good = make.series(2)
    body = multipart_body([part10(good[0]), b"this is not DICOM", part10(good[1])])
    response = client.post(
        "/dicomweb/studies", body, content_type=STOW_TYPE, **basic(personas.technologist)
    )
    assert response.status_code == 202  # some stored, some failed (PS3.18 10.5.3)
    result = _json(response)
    referenced = result["00081199"]["Value"]
    assert [item["00081155"]["Value"][0] for item in referenced] == [
        ds.SOPInstanceUID for ds in good
    ]
    assert referenced[0]["00081190"]["Value"][0].endswith(f"/instances/{good[0].SOPInstanceUID}")
    [failed] = result["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xC000]
    study = Study.objects.get(study_instance_uid=good[0].StudyInstanceUID)
    assert study.number_of_instances == 2
    storage = default_storage()
    for instance in Instance.objects.filter(series__study=study):
        stored = dataset(storage.path(instance.file_path).read_bytes())
        assert stored == next(ds for ds in good if ds.SOPInstanceUID == instance.sop_instance_uid)
    events = AuditEvent.objects.filter(action="create", channel="api")
    assert {(event.object_type, event.outcome) for event in events} == {
        ("pacs.study", "success"),
        ("pacs.instance", "failure"),
    }


def test_stow_all_good_is_200_and_to_a_study_refuses_other_studies(personas, client) -> None:
    auth = basic(personas.admin)
    mine = make.series(1)
    response = client.post(
        "/dicomweb/studies", multipart_body([part10(mine[0])]), content_type=STOW_TYPE, **auth
    )
    assert response.status_code == 200
    assert "00081198" not in _json(response)
    study_uid = mine[0].StudyInstanceUID
    same = make.ct_instance(study_uid=study_uid, series_uid=mine[0].SeriesInstanceUID, number=2)
    other = make.ct_instance()
    response = client.post(
        f"/dicomweb/studies/{study_uid}",
        multipart_body([part10(same), part10(other)]),
        content_type=STOW_TYPE,
        **auth,
    )
    assert response.status_code == 202
    result = _json(response)
    [failed] = result["00081198"]["Value"]
    assert failed["00081155"]["Value"] == [other.SOPInstanceUID]
    assert failed["00081197"]["Value"] == [0xA900]
    assert result["00081190"]["Value"][0].endswith(f"/studies/{study_uid}")
    assert not Study.objects.filter(study_instance_uid=other.StudyInstanceUID).exists()
    assert Study.objects.get(study_instance_uid=study_uid).number_of_instances == 2
    # Nothing stored at all: 409.
    nothing = client.post(
        f"/dicomweb/studies/{study_uid}",
        multipart_body([b"garbage"]),
        content_type=STOW_TYPE,
        **auth,
    )
    assert nothing.status_code == 409


def test_stow_bad_requests(personas, client) -> None:
    auth = basic(personas.technologist)
    assert (
        client.post("/dicomweb/studies", b"{}", content_type="application/json", **auth).status_code
        == 415
    )
    truncated = multipart_body([part10(make.ct_instance())])[:-40]
    response = client.post("/dicomweb/studies", truncated, content_type=STOW_TYPE, **auth)
    assert response.status_code == 400
    assert Study.objects.count() == 0
    # Broken off after a whole part: that one is stored, and the response says so.
    first, second = make.series(2)
    cut = multipart_body([part10(first), part10(second)])[:-100]
    response = client.post("/dicomweb/studies", cut, content_type=STOW_TYPE, **auth)
    assert response.status_code == 202
    result = _json(response)
    assert [i["00081155"]["Value"][0] for i in result["00081199"]["Value"]] == [
        first.SOPInstanceUID
    ]
    assert result["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    assert Instance.objects.get().sop_instance_uid == first.SOPInstanceUID


# --- Who may, who may not ---


def test_every_persona_on_a_study_nobody_referred(personas, client) -> None:
    ds = make.ct_instance()
    study = store([ds])
    study_url = f"/dicomweb/studies/{study.study_instance_uid}"
    for name, user in personas.all().items():
        auth = basic(user)
        # Narrowed to this study: the storers add studies of their own on the way.
        search = client.get(f"/dicomweb/studies?StudyInstanceUID={ds.StudyInstanceUID}", **auth)
        if name in BROWSERS:
            assert _uids(_json(search)) == [study.study_instance_uid], name
        elif name in NARROWED:
            assert _json(search) == [], name
        else:
            assert search.status_code == 403, name
        for url in (study_url, f"{study_url}/metadata"):
            status = client.get(url, **auth).status_code
            expected = 200 if name in BROWSERS else 404 if name in NARROWED else 403
            assert status == expected, f"{name} on {url}: {status}"
        stow = client.post(
            "/dicomweb/studies",
            multipart_body([part10(make.ct_instance())]),
            content_type=STOW_TYPE,
            **auth,
        )
        assert stow.status_code == (200 if name in STORERS else 403), name
    denied = AuditEvent.objects.filter(action="denied", channel="api", outcome="failure")
    assert denied.filter(actor_name="drref", object_id=str(study.pk)).exists()
    assert denied.filter(actor_name="frontdesk", detail="DICOMweb: read images").exists()
    assert denied.filter(actor_name="rad", detail="DICOMweb: store images").exists()


def test_referring_physician_sees_and_retrieves_their_referrals(personas, client) -> None:
    order = factories.order(referring_physician=personas.referring_physician)
    requested = order.requested_procedures.get()
    identifier = order.patient.identifiers.get()
    ds = make.ct_instance(
        study_uid=requested.study_instance_uid,
        accession=order.accession_number,
        patient_id=identifier.value,
        issuer=identifier.issuer.namespace_id,
    )
    study = store([ds])
    store([make.ct_instance()])  # someone else's
    # Matching the study to its order is reconciliation's job; do what it does.
    Study.objects.filter(pk=study.pk).update(requested_procedure=requested)
    auth = basic(personas.referring_physician)
    assert _uids(_json(client.get("/dicomweb/studies", **auth))) == [ds.StudyInstanceUID]
    assert len(_json(client.get("/dicomweb/instances", **auth))) == 1
    response = client.get(f"/dicomweb/studies/{ds.StudyInstanceUID}", **auth)
    [(_, body)] = parts(*_typed(response))
    assert dataset(body) == ds
    other = basic(personas.other_physician)
    assert client.get(f"/dicomweb/studies/{ds.StudyInstanceUID}", **other).status_code == 404


def test_the_browser_session_works_too(personas, client) -> None:
    study = store([make.ct_instance()])
    client.force_login(personas.radiologist)
    assert _uids(_json(client.get("/dicomweb/studies"))) == [study.study_instance_uid]


@pytest.mark.parametrize(
    "url",
    ["/dicomweb/studies", "/dicomweb/studies/1.2.3", "/dicomweb/studies/1.2.3/metadata"],
)
def test_anonymous_gets_401(client, url: str) -> None:
    for response in (client.get(url), client.post(url, b"", content_type=STOW_TYPE)):
        assert response.status_code == 401
        assert response["WWW-Authenticate"].startswith("Basic")


def test_wrong_password_gets_401(personas, client) -> None:
    response = client.get("/dicomweb/studies", **basic(personas.radiologist, "wrong"))
    assert response.status_code == 401


def test_retrievals_and_searches_are_audited(personas, client) -> None:
    study = store(make.series(2))
    auth = basic(personas.radiologist)
    client.get("/dicomweb/studies?PatientID=TP0001", **auth)
    _content(client.get(f"/dicomweb/studies/{study.study_instance_uid}", **auth))
    _content(client.get(f"/dicomweb/studies/{study.study_instance_uid}/metadata", **auth))
    events = AuditEvent.objects.filter(actor_name="rad", channel="api").order_by("id")
    assert [(e.action, e.object_type, e.object_id) for e in events] == [
        ("query", "pacs.study", ""),
        ("export", "pacs.study", str(study.pk)),
        ("view", "pacs.study", str(study.pk)),
    ]
    assert events[0].detail.startswith("QIDO-RS: 1 result(s); PatientID=TP0001")
    assert events[1].detail == "WADO-RS: 2 instance(s)"
    assert events[1].patient_key == str(study.patient_id)


def test_cors(personas, client, settings: Any) -> None:
    settings.DICOMWEB_CORS_ORIGINS = ["https://viewer.example"]
    auth = basic(personas.radiologist)
    allowed = client.get("/dicomweb/studies", HTTP_ORIGIN="https://viewer.example", **auth)
    assert allowed["Access-Control-Allow-Origin"] == "https://viewer.example"
    other = client.get("/dicomweb/studies", HTTP_ORIGIN="https://evil.example", **auth)
    assert not other.has_header("Access-Control-Allow-Origin")
    preflight = client.options(
        "/dicomweb/studies",
        HTTP_ORIGIN="https://viewer.example",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET",
    )
    assert preflight.status_code == 204
    assert "GET" in preflight["Access-Control-Allow-Methods"]
    assert preflight["Access-Control-Allow-Origin"] == "https://viewer.example"


# --- Frames, and instances stored compressed ---


def _frames_url(ds: Any, frames: str) -> str:
    return (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/{frames}"
    )


def test_frames_of_a_multi_frame_instance(personas, client) -> None:
    ds = make.ct_instance(size=8)
    frame = len(ds.PixelData)
    ds.NumberOfFrames = 3
    ds.PixelData = bytes(range(256)) * (3 * frame // 256)
    store([ds])
    auth = basic(personas.radiologist)
    received = parts(*_typed(client.get(_frames_url(ds, "3,1"), **auth)))
    assert [body for _, body in received] == [ds.PixelData[2 * frame :], ds.PixelData[:frame]]
    assert all(content_type.startswith("application/octet-stream") for content_type, _ in received)
    assert client.get(_frames_url(ds, "4"), **auth).status_code == 400
    assert client.get(_frames_url(ds, "0"), **auth).status_code == 400
    assert client.get(_frames_url(ds, "x"), **auth).status_code == 400
    assert client.get(_frames_url(ds, "1"), **basic(personas.patient)).status_code == 404


def test_an_instance_stored_big_endian(personas, client) -> None:
    """Explicit VR Big Endian (retired; PS3.18 8.7.3 keeps it off the web) cannot be
    rewritten by pydicom: sent as stored for *, refused before any byte otherwise, and
    its frames sent as little endian words."""
    ds = make.ct_instance(size=8, transfer_syntax=ExplicitVRBigEndian)
    store([ds])
    auth = basic(personas.radiologist)
    study_url = f"/dicomweb/studies/{ds.StudyInstanceUID}"
    any_syntax = {"HTTP_ACCEPT": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    [(content_type, body)] = parts(*_typed(client.get(study_url, **any_syntax, **auth)))
    assert _part_type(content_type) == ("application/dicom", ExplicitVRBigEndian)
    assert dataset(body) == ds
    refused = client.get(study_url, **auth)  # the default, Explicit VR Little Endian
    assert refused.status_code == 406
    assert ExplicitVRBigEndian in refused.content.decode()
    [(_, frame)] = parts(*_typed(client.get(_frames_url(ds, "1"), **auth)))
    assert frame == numpy.frombuffer(ds.PixelData, ">u2").astype("<u2").tobytes()
    assert frame != ds.PixelData  # as stored, the words are the other way round
    stored = (1 << int(ds.BitsStored)) - 1  # the values a reader of the stored file sees
    assert numpy.array_equal(
        numpy.frombuffer(frame, "<u2").reshape(ds.pixel_array.shape) & stored,
        ds.pixel_array.astype("<u2") & stored,
    )


def test_an_instance_stored_compressed(personas, client) -> None:
    ds = make.ct_instance()
    original = ds.PixelData
    ds.compress(RLELossless, encoding_plugin="pydicom")
    store([ds])
    auth = basic(personas.radiologist)
    [(_, frame)] = parts(*_typed(client.get(_frames_url(ds, "1"), **auth)))
    assert frame == original
    study_url = f"/dicomweb/studies/{ds.StudyInstanceUID}"
    # No transfer syntax asked: the default, Explicit VR Little Endian (PS3.18 8.7.3).
    for headers in ({}, {"HTTP_ACCEPT": 'multipart/related; type="application/dicom"'}):
        [(content_type, body)] = parts(*_typed(client.get(study_url, **headers, **auth)))
        assert _part_type(content_type) == ("application/dicom", ExplicitVRLittleEndian)
        got = dataset(body)
        assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert got.PixelData == original
    # Any (PS3.18 8.7.3.5.2), or its own: as stored, byte for byte.
    stored = default_storage().path(Instance.objects.get().file_path).read_bytes()
    for accept in (ANY_SYNTAX, f"{ANY_SYNTAX[:-1]}{RLELossless}"):
        [(content_type, body)] = parts(*_typed(client.get(study_url, HTTP_ACCEPT=accept, **auth)))
        assert _part_type(content_type) == ("application/dicom", RLELossless)
        assert body == stored


def test_each_instance_in_the_first_syntax_it_can_be_sent_in(personas, client) -> None:
    """PS3.18 8.7.8.2 note 1: the parts of one response may differ in transfer syntax."""
    plain, packed = make.series(2)
    packed.compress(RLELossless, encoding_plugin="pydicom")
    store([plain, packed])
    url = f"/dicomweb/studies/{plain.StudyInstanceUID}"
    auth = basic(personas.radiologist)
    rle_only = f"{ANY_SYNTAX[:-1]}{RLELossless}"
    refused = client.get(url, HTTP_ACCEPT=rle_only, **auth)
    assert refused.status_code == 406
    assert f"{plain.SOPInstanceUID} is stored as {ExplicitVRLittleEndian}" in (
        refused.content.decode()
    )
    either = f'{rle_only}, multipart/related; type="application/dicom"'
    received = parts(*_typed(client.get(url, HTTP_ACCEPT=either, **auth)))
    assert [_part_type(content_type)[1] for content_type, _ in received] == [
        ExplicitVRLittleEndian,
        RLELossless,
    ]


def test_lossy_pixel_data_is_sent_as_stored_unless_a_syntax_is_named(personas, client) -> None:
    """PS3.18 8.7.3: the default does not apply when the pixel data exist only lossy."""
    ds = dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))  # JPEG Baseline
    store([ds])
    stored = default_storage().path(Instance.objects.get().file_path).read_bytes()
    url = f"/dicomweb/studies/{ds.StudyInstanceUID}"
    auth = basic(personas.radiologist)
    [(content_type, body)] = parts(*_typed(client.get(url, **auth)))
    assert _part_type(content_type) == ("application/dicom", JPEGBaseline8Bit)
    assert body == stored
    named = f"{ANY_SYNTAX[:-1]}{ExplicitVRLittleEndian}"
    [(content_type, body)] = parts(*_typed(client.get(url, HTTP_ACCEPT=named, **auth)))
    got = dataset(body)
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert got.PhotometricInterpretation == "RGB"  # decompressed as the metadata says
    assert len(got.PixelData) == ds.Rows * ds.Columns * 3


def test_frames_in_the_stored_syntax_when_asked(personas, client) -> None:
    from pydicom.encaps import generate_frames

    ds = make.ct_instance()
    original = ds.PixelData
    ds.compress(RLELossless, encoding_plugin="pydicom")
    [stored_frame] = generate_frames(ds.PixelData, number_of_frames=1)
    store([ds])
    auth = basic(personas.radiologist)
    for accept in (
        'multipart/related; type="image/dicom-rle"',
        f'multipart/related; type="image/dicom-rle"; transfer-syntax={RLELossless}',
        'multipart/related; type="image/dicom-rle"; transfer-syntax=*',
        'multipart/related; type="image/*"',
        "multipart/related; transfer-syntax=*",
    ):
        response = client.get(_frames_url(ds, "1"), HTTP_ACCEPT=accept, **auth)
        assert response.status_code == 200, accept
        [(content_type, frame)] = parts(*_typed(response))
        assert _part_type(content_type) == ("image/dicom-rle", RLELossless), accept
        assert frame == stored_frame
    # application/octet-stream is uncompressed pixel data (PS3.18 8.7.3.3.1, Table 8.7.3-4);
    # compressed frames have image/* types (8.7.3.3.2, Table 8.7.3-5). So with
    # transfer-syntax=* it stands for any uncompressed syntax, never the stored compressed
    # bytes (D. Clunie, OHIF issue 4382). Cornerstone's WADO-RS loader asks exactly this.
    for accept in (
        'multipart/related; type="application/octet-stream"; transfer-syntax=*',
        "multipart/related; type=application/octet-stream; transfer-syntax=*",
    ):
        response = client.get(_frames_url(ds, "1"), HTTP_ACCEPT=accept, **auth)
        [(content_type, frame)] = parts(*_typed(response))
        assert _part_type(content_type) == ("application/octet-stream", ExplicitVRLittleEndian)
        assert frame == original
    # Octet-stream in a compressed syntax is no representation: 406, saying what can be sent.
    for accept in (
        f'multipart/related; type="application/octet-stream"; transfer-syntax={RLELossless}',
        'multipart/related; type="image/jpeg"',  # another compressed syntax: not made
    ):
        refused = client.get(_frames_url(ds, "1"), HTTP_ACCEPT=accept, **auth)
        assert refused.status_code == 406, accept
        assert f"image/dicom-rle ({RLELossless}, as stored)" in refused.content.decode()
    # Asking for JPEG or else uncompressed: the uncompressed frame.
    either = (
        'multipart/related; type="image/jpeg", multipart/related; type="application/octet-stream"'
    )
    [(content_type, frame)] = parts(
        *_typed(client.get(_frames_url(ds, "1"), HTTP_ACCEPT=either, **auth))
    )
    assert content_type.startswith("application/octet-stream")
    assert frame == original


@pytest.mark.parametrize(
    ("stored", "wanted", "sent"),
    [
        (str(ExplicitVRLittleEndian), [""], str(ExplicitVRLittleEndian)),  # as stored
        (str(ImplicitVRLittleEndian), ["*"], str(ExplicitVRLittleEndian)),  # PS3.18 8.7.3
        (str(ImplicitVRLittleEndian), [str(ImplicitVRLittleEndian)], None),
        (str(RLELossless), [""], str(ExplicitVRLittleEndian)),  # lossless: decompressed
        (str(JPEGBaseline8Bit), [""], str(JPEGBaseline8Bit)),  # lossy: as stored
        (str(JPEGBaseline8Bit), [str(ExplicitVRLittleEndian)], str(ExplicitVRLittleEndian)),
        ("1.2.840.10008.1.2.4.100", [str(ExplicitVRLittleEndian)], None),  # MPEG-2: no decoder
        ("1.2.840.10008.1.2.4.100", ["*"], "1.2.840.10008.1.2.4.100"),
        ("1.2.3.4", ["", str(ExplicitVRLittleEndian)], None),  # unknown: not decodable
        ("1.2.3.4", [str(RLELossless), "*"], "1.2.3.4"),
    ],
)
def test_sent_syntax(stored: str, wanted: list[str], sent: str | None) -> None:
    assert wado.sent_syntax(Instance(transfer_syntax_uid=stored), wanted) == sent


def test_pixel_data_too_long_to_decompress_is_sent_as_stored() -> None:
    """PS3.18 8.7.3: the default does not apply to pixel data Explicit VR cannot hold."""
    huge = Instance(
        transfer_syntax_uid=str(RLELossless),
        rows=4096,
        columns=4096,
        bits_allocated=16,
        number_of_frames=200,
    )
    assert wado.sent_syntax(huge, [""]) == str(RLELossless)
    huge.number_of_frames = 2
    assert wado.sent_syntax(huge, [""]) == str(ExplicitVRLittleEndian)
