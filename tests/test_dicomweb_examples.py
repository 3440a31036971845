"""PS3.18's worked examples taken literally: the example requests are sent as printed, and
the DICOM JSON example of Annex F is compared value for value with what we answer for
instances carrying its values. Each test names the section its example comes from.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from django.test import Client
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, PositronEmissionTomographyImageStorage

from pacs.models import Study
from ris import services as ris_services
from tests import dicom_factory as make
from tests.dicomweb_util import basic, multipart_body, part10, parts, store
from tests.personas import Personas

pytestmark = pytest.mark.django_db

SERVICE = "http://testserver/dicomweb"
PET_STORAGE = PositronEmissionTomographyImageStorage


def _json(response: Any) -> Any:
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"] == "application/dicom+json"
    return json.loads(response.content)


def _content(response: Any) -> bytes:
    assert response.status_code == 200, response.content[:300]
    if response.streaming:
        return b"".join(response.streaming_content)
    return bytes(response.content)


def _study_uids(items: list[dict[str, Any]]) -> set[str]:
    return {item["0020000D"]["Value"][0] for item in items}


def _known_as(study: Study, *identifiers: tuple[str, str]) -> None:
    ris_services.add_patient_identifiers(
        study.patient,
        [ris_services.IdentifierInput(value=value, issuer=issuer) for value, issuer in identifiers],
    )


# --- PS3.18 10.6.1.2.1 Attribute/Value Pair Requirements: "examples of Search URIs with
# valid Attribute/value pairs", sent as printed. ---

SMITH = "1.2.392.200036.9116.2.2.2.2162893313.1029997326.94587"
SMITHERS = "1.2.392.200036.9116.2.2.2.2162893313.1029997326.94583"
JONES = "1.2.392.200036.9116.2.2.2.2162893313.1029997326.94589"
EVERYONE = {SMITH, SMITHERS, JONES}


@pytest.fixture
def example_studies() -> None:
    """Patient 11235813 (SMITH) seen on 2013-05-09; SMITHERS, whom the hospital also knows
    as 11235813 under another issuer; JONES, seen on 2013-05-10."""
    store(make.series(1, study_uid=SMITH, patient_name="SMITH^JOHN", patient_id="11235813",
                      study_date="20130509"))  # fmt: skip
    smithers = store(make.series(1, study_uid=SMITHERS, patient_name="SMITHERS^ANN",
                                 patient_id="SM-2", study_date="20130510"))  # fmt: skip
    _known_as(smithers, ("11235813", "NATIONAL"))
    store(make.series(1, study_uid=JONES, patient_name="JONES^BOB", patient_id="JO-3",
                      study_date="20130510"))  # fmt: skip


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        ("/studies?PatientID=11235813", {SMITH}),
        ("/studies?PatientID=11235813&StudyDate=20130509", {SMITH}),
        ("/studies?00100010=SMITH*&00101002.00100020=11235813&limit=25", {SMITHERS}),
        ("/studies?00100010=SMITH*&OtherPatientIDsSequence.00100020=11235813", {SMITHERS}),
        ("/studies?PatientID=11235813&includefield=00081048,00081049,00081060", {SMITH}),
        (
            "/studies?PatientID=11235813&includefield=00081048&includefield=00081049"
            "&includefield=00081060",
            {SMITH},
        ),
        ("/studies?PatientID=11235813&StudyDate=20130509-20130510", {SMITH}),
        (
            "/studies?StudyInstanceUID=1.2.392.200036.9116.2.2.2.2162893313.1029997326.94587,"
            "1.2.392.200036.9116.2.2.2.2162893313.1029997326.94583",
            {SMITH, SMITHERS},
        ),
        # Private data elements: the index holds none, so the match is universal (with a
        # Warning) and nothing private is returned.
        ("/studies?00230010=AcmeCompany&includefield=00231002&includefield=00231003", EVERYONE),
        (
            "/studies?00230010=AcmeCompany&00231001=001239&includefield=00231002"
            "&includefield=00231003",
            EVERYONE,
        ),
    ],
)
def test_the_search_uri_examples_of_10_6_1_2_1(
    personas: Personas, client: Client, example_studies: None, example: str, expected: set[str]
) -> None:
    response = client.get(f"/dicomweb{example}", **basic(personas.radiologist))
    found = _json(response)
    assert _study_uids(found) == expected
    for item in found:
        assert not [tag for tag in item if tag.startswith("0023")]
        if "includefield=00081048" in example:
            # Physicians of Record, its Identification Sequence, Name of Physician(s)
            # Reading Study: asked for, not held by the index, so returned empty.
            assert item["00081048"] == {"vr": "PN"}
            assert item["00081049"] == {"vr": "SQ"}
            assert item["00081060"] == {"vr": "PN"}
    if "0023" in example:
        warning = response["Warning"]
        assert warning.startswith(f"299 {SERVICE}: The following attributes are not supported")
        assert "00230010" in warning
        assert ("00231001" in warning) == ("00231001=" in example)
    else:
        assert not response.has_header("Warning")


def test_the_pagination_warning_of_8_3_4_4_1(
    personas: Personas, client: Client, example_studies: None
) -> None:
    """PS3.18 8.3.4.4.1: "Warning: 299 <service>: There are <remaining> additional results
    that can be requested", <service> being the base URI of the origin server."""
    auth = basic(personas.radiologist)
    first = client.get("/dicomweb/studies?limit=1", **auth)
    assert len(_json(first)) == 1
    assert first["Warning"] == (
        f"299 {SERVICE}: There are 2 additional results that can be requested"
    )
    second = client.get("/dicomweb/studies?limit=1&offset=1", **auth)
    assert second["Warning"].endswith(": There are 1 additional results that can be requested")
    last = client.get("/dicomweb/studies?limit=1&offset=2", **auth)
    assert len(_json(last)) == 1 and not last.has_header("Warning")
    # PS3.18 8.3.4.2: the fuzzymatching warning, word for word.
    fuzzy = client.get("/dicomweb/studies?PatientID=11235813&fuzzymatching=true", **auth)
    assert fuzzy["Warning"] == (
        f"299 {SERVICE}: The fuzzymatching parameter is not supported. "
        "Only literal matching has been performed."
    )


# --- PS3.18 F.2.1.1.2: the DICOM JSON example, "a QIDO-RS SearchForStudies response
# consisting of two matching studies, corresponding to the example QIDO-RS request:
# GET http://qido.nema.org/studies?PatientID=12345&includefield=all&limit=2". ---


def _example_result(
    study_uid: str, date: str, time: str, accession: str, series: int, instances: int
) -> dict[str, Any]:
    return {
        "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
        "00080020": {"vr": "DA", "Value": [date]},
        "00080030": {"vr": "TM", "Value": [time]},
        "00080050": {"vr": "SH", "Value": [accession]},
        "00080056": {"vr": "CS", "Value": ["ONLINE"]},
        "00080061": {"vr": "CS", "Value": ["CT", "PET"]},
        "00080090": {"vr": "PN", "Value": [{"Alphabetic": "^Bob^^Dr."}]},
        "00081190": {"vr": "UR", "Value": [f"http://wado.nema.org/studies/{study_uid}"]},
        "00090010": {"vr": "LO", "Value": ["Vendor A"]},
        "00091002": {"vr": "UN", "InlineBinary": "z0x9c8v7"},
        "00100010": {
            "vr": "PN",
            "Value": [{"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小東"}],
        },
        "00100020": {"vr": "LO", "Value": ["12345"]},
        "00100021": {"vr": "LO", "Value": ["Hospital A"]},
        "00100030": {"vr": "DA", "Value": ["19670701"]},
        "00100040": {"vr": "CS", "Value": ["M"]},
        "00101002": {
            "vr": "SQ",
            "Value": [
                {
                    "00100020": {"vr": "LO", "Value": ["54321"]},
                    "00100021": {"vr": "LO", "Value": ["Hospital B"]},
                },
                {
                    "00100020": {"vr": "LO", "Value": ["24680"]},
                    "00100021": {"vr": "LO", "Value": ["Hospital C"]},
                },
            ],
        },
        "0020000D": {"vr": "UI", "Value": [study_uid]},
        "00200010": {"vr": "SH", "Value": [accession]},
        "00201206": {"vr": "IS", "Value": [series]},
        "00201208": {"vr": "IS", "Value": [instances]},
    }


# The example's two results, as printed but for the VR of Study Date and Patient's Birth
# Date: some editions print "DT", the data dictionary (PS3.6) says DA. Their Number of
# Study Related Instances (942 and 1123) are the only values not stored literally: storing
# two thousand instances takes twenty seconds, so each series gets one instance, and those
# two counts are expected as stored (STORED_INSTANCES).
EXAMPLE_RESULTS = [
    _example_result(
        "1.2.392.200036.9116.2.2.2.1762893313.1029997326.945873",
        "20130409", "131600.0000", "11235813", series=4, instances=942,
    ),
    _example_result(
        "1.2.392.200036.9116.2.2.2.2162893313.1029997326.945876",
        "20130309", "111900.0000", "11235821", series=5, instances=1123,
    ),
]  # fmt: skip
STORED_INSTANCES = {942: 4, 1123: 5}
STORED_INSTANCES = {942: 4, 1123: 5}
# Private data elements: the index holds none, and PS3.18 10.6.3.3.1 returns a private
# element only "if it is supported by the origin server".
NOT_HELD = {"00090010", "00091002"}


def _instances_of(example: dict[str, Any]) -> list[Dataset]:
    """Instances carrying the example result's values: its series, its instances (tiny
    images), the first series CT and the rest PET (Modalities in Study: CT, PET)."""
    value = {tag: attribute.get("Value", [None])[0] for tag, attribute in example.items()}
    study_uid = value["0020000D"]
    datasets = []
    series_count, instance_count = value["00201206"], STORED_INSTANCES[value["00201208"]]
    for series_number in range(series_count):
        modality = "CT" if series_number == 0 else "PET"
        count = instance_count // series_count + (
            instance_count % series_count if series_number == 0 else 0
        )
        for ds in make.series(
            count,
            study_uid=study_uid,
            patient_name="Wang^XiaoDong=王^小東",
            patient_id="12345",
            issuer="Hospital A",
            charset="ISO_IR 192",
            accession=value["00080050"],
            study_date=value["00080020"],
            study_time=value["00080030"],
            referring="^Bob^^Dr.",
            study_description="",
            modality=modality,
            size=1,
            sop_class=CTImageStorage if modality == "CT" else PET_STORAGE,
        ):
            ds.StudyID = value["00200010"]
            ds.PatientBirthDate = "19670701"
            ds.PatientSex = "M"
            datasets.append(ds)
    return datasets


def test_the_dicom_json_example_of_f_2_1_1_2(personas: Personas, client: Client) -> None:
    first = None
    for example in EXAMPLE_RESULTS:
        study = store(_instances_of(example))
        first = first or study
    assert first is not None
    # The other patient IDs are the RIS's, learnt as from the hospital's ADT feed.
    _known_as(first, ("54321", "Hospital B"), ("24680", "Hospital C"))

    response = client.get(
        "/dicomweb/studies?PatientID=12345&includefield=all&limit=2",
        **basic(personas.radiologist),
    )
    ours = {item["0020000D"]["Value"][0]: item for item in _json(response)}
    assert not response.has_header("Warning")  # exactly two matches: none remaining
    assert len(ours) == 2
    for example in EXAMPLE_RESULTS:
        expected = copy.deepcopy(example)
        for tag in NOT_HELD:
            del expected[tag]
        expected["00201208"]["Value"] = [STORED_INSTANCES[expected["00201208"]["Value"][0]]]
        uid = expected["0020000D"]["Value"][0]
        got = ours[uid]
        retrieve_url = got["00081190"]["Value"][0]
        assert retrieve_url == f"{SERVICE}/studies/{uid}"
        expected["00081190"]["Value"] = [retrieve_url]  # our server, not wado.nema.org
        # Every attribute of the example, value for value.
        assert {tag: got.get(tag) for tag in expected} == expected
        # What "all" adds beyond the example are attributes with no value here.
        assert all("Value" not in got[tag] for tag in set(got) - set(expected)), sorted(
            set(got) - set(expected)
        )


# --- WADO-RS and STOW-RS examples ---


def test_frames_in_any_order_as_in_6_5_4(personas: Personas, client: Client) -> None:
    """PS3.18 (2017b) 6.5.4: "{FrameList} is a comma or %2C separated list of one or more non
    duplicate frame numbers. These may be in any order (e.g., ../frames/1,2,4,3)"."""
    ds = make.ct_instance(size=4)
    frame = bytes(ds.PixelData)
    ds.NumberOfFrames = 4
    ds.PixelData = b"".join(bytes([number]) * len(frame) for number in range(1, 5))
    store([ds])
    auth = basic(personas.radiologist)
    base = (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    for frames in ("1,2,4,3", "1%2C2%2C4%2C3"):
        response = client.get(f"{base}/frames/{frames}", **auth)
        received = parts(response["Content-Type"], _content(response))
        assert [body[0] for _, body in received] == [1, 2, 4, 3], frames
        assert [len(body) for _, body in received] == [len(frame)] * 4


def test_retrieve_bulk_data_as_in_b_10(personas: Personas, client: Client) -> None:
    """PS3.18 B.10: the BulkDataURI of the metadata, asked for with
    Accept: multipart/related; type="application/octet-stream", answers one
    application/octet-stream part whose Content-Location is that URI."""
    ds = make.ct_instance()
    ds.EncapsulatedDocument = bytes(range(256)) * 8  # a large value: given by BulkDataURI
    store([ds])
    auth = basic(personas.radiologist)
    url = (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/metadata"
    )
    [metadata] = json.loads(_content(client.get(url, **auth)))
    for tag, value in (("00420011", ds.EncapsulatedDocument), ("7FE00010", ds.PixelData)):
        bulk_data_uri = metadata[tag]["BulkDataURI"]
        response = client.get(
            bulk_data_uri, HTTP_ACCEPT='multipart/related; type="application/octet-stream"', **auth
        )
        content_type = response["Content-Type"]
        assert content_type.startswith("multipart/related")
        assert 'type="application/octet-stream"' in content_type
        [(part_type, body)] = parts(content_type, _content(response))
        assert part_type == "application/octet-stream"
        assert body == value
        raw = _content(response)
        location = bulk_data_uri.removeprefix("http://testserver")
        assert f"Content-Location: {location}".encode() in raw


def test_store_as_in_b_23(personas: Personas, client: Client) -> None:
    """PS3.18 B.23 stores to /studies/1.2.250.1.59.40211.12345678.678910 with
    boundary=MESSAGEBOUNDARY; its XML metadata and JPEG parts are a media type this archive
    does not take (415), and the same instance sent as application/dicom is stored, answered
    with the ReferencedSOPSequence of the example's response (Annex I)."""
    study_uid = "1.2.250.1.59.40211.12345678.678910"
    series_uid = "1.2.250.1.59.40211.789001276.14556172.67789"
    sop_uid = "1.2.250.1.59.40211.2678810.87991027.899772.2"
    auth = basic(personas.technologist)
    url = f"/dicomweb/studies/{study_uid}"
    xml = client.post(
        url,
        data=b"--MESSAGEBOUNDARY\r\nContent-Type: application/dicom+xml\r\n\r\n<x/>\r\n"
        b"--MESSAGEBOUNDARY--\r\n",
        content_type='multipart/related; type="application/dicom+xml"; boundary=MESSAGEBOUNDARY',
        **auth,
    )
    assert xml.status_code == 415
    ds = make.ct_instance(study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid)
    ds.StudyDate = "20130409"
    body = multipart_body([part10(ds)]).replace(b"test-boundary-1234", b"MESSAGEBOUNDARY")
    response = client.post(
        url,
        data=body,
        content_type='multipart/related; type="application/dicom"; boundary=MESSAGEBOUNDARY',
        HTTP_ACCEPT="application/dicom+json",
        **auth,
    )
    assert response.status_code == 200, response.content[:300]
    answer = _json(response)
    [item] = answer["00081199"]["Value"]
    assert item["00081150"] == {"vr": "UI", "Value": [str(ds.SOPClassUID)]}
    assert item["00081155"] == {"vr": "UI", "Value": [sop_uid]}
    assert item["00081190"]["vr"] == "UR"  # Retrieve URL (the example's "UT" predates UR)
    assert item["00081190"]["Value"][0].endswith(
        f"/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
    )
    assert answer["00081190"]["Value"][0].endswith(f"/studies/{study_uid}")
