"""QIDO-RS matching on attributes inside sequences (PS3.18 8.3.4.1: an attribute is a path
of attribute-ids joined by "."), answered from the index and the RIS, never from files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from pacs.models import Study
from ris import services as ris_services
from tests import dicom_factory as make
from tests import factories
from tests.dicomweb_util import basic, store
from tests.personas import Personas

pytestmark = pytest.mark.django_db

STUDY_UID = "0020000D"
OTHER_PATIENT_IDS = "00101002"
REQUEST_ATTRIBUTES = "00400275"


def _uids(response: Any, tag: str = STUDY_UID) -> list[str]:
    assert response.status_code == 200, response.content[:200]
    return [item[tag]["Value"][0] for item in json.loads(response.content)]


def _known_as(study: Study, value: str, issuer: str) -> None:
    """The RIS learns another identifier of STUDY's patient (as from an ADT message)."""
    ris_services.add_patient_identifiers(
        study.patient, [ris_services.IdentifierInput(value=value, issuer=issuer)]
    )


@pytest.fixture
def two_patients() -> tuple[Study, Study]:
    smith = store(make.series(1, patient_name="Smith^Ann", patient_id="SEQ1"))
    smyth = store(make.series(1, patient_name="Smyth^Bo", patient_id="SEQ2"))
    _known_as(smith, "11235813", "NATIONAL")
    _known_as(smyth, "99999999", "NATIONAL")
    return smith, smyth


@pytest.mark.parametrize(
    "query",
    [
        # PS3.18 10.6.1.2.1's examples, by tag and by keyword.
        "00100010=SM*&00101002.00100020=11235813",
        "00100010=SM*&OtherPatientIDsSequence.00100020=11235813",
        "OtherPatientIDsSequence.PatientID=1123*",
        "OtherPatientIDsSequence.PatientID=11235813&OtherPatientIDsSequence.IssuerOfPatientID=NATIONAL",
    ],
)
def test_a_study_is_found_by_the_patients_other_identifiers(
    personas: Personas, client: Client, two_patients: tuple[Study, Study], query: str
) -> None:
    smith, _ = two_patients
    response = client.get(f"/dicomweb/studies?{query}", **basic(personas.radiologist))
    assert _uids(response) == [smith.study_instance_uid]
    assert not response.has_header("Warning")
    [found] = json.loads(response.content)
    # PS3.4 C.2.2.2.6: the matching items, with the attributes asked for, are returned.
    items = found[OTHER_PATIENT_IDS]["Value"]
    assert {"vr": "LO", "Value": ["11235813"]} in [item["00100020"] for item in items]
    assert all(item["00100020"]["Value"] != ["SEQ1"] for item in items)  # not "other"


@pytest.mark.parametrize(
    "query",
    [
        "OtherPatientIDsSequence.PatientID=12345",
        # One item must match every item key: 11235813 is not issued by HOSPITAL.
        "OtherPatientIDsSequence.PatientID=11235813&OtherPatientIDsSequence.IssuerOfPatientID=HOSPITAL",
        # The study's own Patient ID is not one of its other IDs.
        "OtherPatientIDsSequence.PatientID=SEQ1",
    ],
)
def test_a_value_no_item_has_finds_nothing(
    personas: Personas, client: Client, two_patients: tuple[Study, Study], query: str
) -> None:
    response = client.get(f"/dicomweb/studies?{query}", **basic(personas.radiologist))
    assert _uids(response) == []


def test_universal_sequence_matching_returns_every_item(
    personas: Personas, client: Client, two_patients: tuple[Study, Study]
) -> None:
    smith, smyth = two_patients
    auth = basic(personas.radiologist)
    response = client.get("/dicomweb/studies?OtherPatientIDsSequence=", **auth)
    assert set(_uids(response)) == {smith.study_instance_uid, smyth.study_instance_uid}
    by_uid = {item[STUDY_UID]["Value"][0]: item for item in json.loads(response.content)}
    [item] = by_uid[smith.study_instance_uid][OTHER_PATIENT_IDS]["Value"]
    assert item == {
        "00100020": {"vr": "LO", "Value": ["11235813"]},
        "00100021": {"vr": "LO", "Value": ["NATIONAL"]},
    }
    included = client.get(
        "/dicomweb/studies?PatientID=SEQ2&includefield=OtherPatientIDsSequence", **auth
    )
    [only] = json.loads(included.content)
    assert only[OTHER_PATIENT_IDS]["Value"][0]["00100020"]["Value"] == ["99999999"]
    assert "00101002" not in json.loads(client.get("/dicomweb/studies", **auth).content)[0]


def test_request_attributes_of_the_reconciled_order(personas: Personas, client: Client) -> None:
    booked = factories.completed_order()
    study = factories.received_study(booked)
    store(make.series(1, patient_id="SEQ3"))  # another study, of no order
    study.refresh_from_db()
    assert study.requested_procedure is not None
    requested = study.requested_procedure
    step = requested.steps.get()
    auth = basic(personas.radiologist)
    for query in (
        f"RequestAttributesSequence.RequestedProcedureID={requested.requested_procedure_id}",
        f"00400275.00400009={step.sps_id}",  # PS3.18 Table 10.6.1-5: >ScheduledProcedureStepID
        f"RequestAttributesSequence.AccessionNumber={booked.accession_number}",
    ):
        response = client.get(f"/dicomweb/series?{query}", **auth)
        [found] = json.loads(response.content)
        assert found[STUDY_UID]["Value"] == [study.study_instance_uid], query
        [item] = found[REQUEST_ATTRIBUTES]["Value"]
        assert len(item) == 1  # only the item key asked for (PS3.4 C.2.2.2.6)
    none = client.get(
        "/dicomweb/series?RequestAttributesSequence.RequestedProcedureID=NOPE", **auth
    )
    assert _uids(none) == []
    # A Series attribute: not a key of a studies search (PS3.18 10.6.1.2.1).
    refused = client.get(
        "/dicomweb/studies?RequestAttributesSequence.RequestedProcedureID=1", **auth
    )
    assert refused.status_code == 400


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("ReferencedStudySequence.ReferencedSOPInstanceUID=1.2.3", "ReferencedStudySequence."),
        ("00081110.00081155=1.2.3", "00081110.00081155"),
        ("OtherPatientIDsSequence.TypeOfPatientID=TEXT", "OtherPatientIDsSequence.TypeOfPatientID"),
        ("OtherPatientIDsSequence.IssuerOfPatientIDQualifiersSequence.UniversalEntityID=X", "Qual"),
        ("AdmittingDiagnosesDescription=flu", "AdmittingDiagnosesDescription"),
        ("00230010=AcmeCompany", "00230010"),  # a private creator (PS3.18 10.6.1.2.1)
    ],
)
def test_a_key_the_index_cannot_answer_is_matched_universally_with_a_warning(
    personas: Personas, client: Client, two_patients: tuple[Study, Study], query: str, named: str
) -> None:
    smith, smyth = two_patients
    response = client.get(f"/dicomweb/studies?{query}", **basic(personas.radiologist))
    # PS3.4 C.2.2.1.3 / PS3.17 YYYY.7.11: an unsupported optional key is a universal match.
    assert set(_uids(response)) == {smith.study_instance_uid, smyth.study_instance_uid}
    warning = response["Warning"]
    assert warning.startswith("299 ")
    assert "The following attributes are not supported for matching: " in warning
    assert named in warning
    # Not returned: the response holds only the keys the origin server supports (10.6.3.3).
    first = json.loads(response.content)[0]
    assert "00081110" not in first and "00230010" not in first and "00081080" not in first


@pytest.mark.parametrize(
    "query",
    [
        "PatientID.PatientName=X",  # PatientID is not a sequence
        "OtherPatientIDsSequence.NoSuchKeyword=1",
        "OtherPatientIDsSequence..PatientID=1",
        "FFFF0000=1",  # not private: group FFFF is reserved (PS3.5 7.8.1)
    ],
)
def test_a_malformed_attribute_path_is_refused(
    personas: Personas, client: Client, query: str
) -> None:
    response = client.get(f"/dicomweb/studies?{query}", **basic(personas.radiologist))
    assert response.status_code == 400
    assert response.content.strip()


def test_sequence_matching_takes_a_constant_number_of_queries(
    personas: Personas, client: Client
) -> None:
    auth = basic(personas.radiologist)
    url = (
        "/dicomweb/studies?OtherPatientIDsSequence.IssuerOfPatientID=NATIONAL"
        "&includefield=OtherPatientIDsSequence"
    )

    def count() -> tuple[int, int]:
        with CaptureQueriesContext(connection) as context:
            response = client.get(url, **auth)
        return len(json.loads(response.content)), len(context.captured_queries)

    first = store(make.series(1, patient_id="QC0"))
    _known_as(first, "N0", "NATIONAL")
    found, few = count()
    assert found == 1
    for number in range(1, 7):
        study = store(make.series(2, patient_id=f"QC{number}"))
        _known_as(study, f"N{number}", "NATIONAL")
        _known_as(study, f"M{number}", "MILITARY")
    # No file is opened: the answer comes from the index and the RIS with the files gone.
    shutil.rmtree(Path(settings.STORAGE_DIR))
    assert count() == (7, few)


def test_national_passport_and_insurance_numbers_are_not_other_patient_ids(
    personas: Personas, client: Client, two_patients: tuple[Study, Study]
) -> None:
    """Whoever may see a study must not read the patient's national, passport or insurance
    number through QIDO: only record numbers are Other Patient IDs."""
    smith, _ = two_patients
    for value, kind in (("NI-4711", "NI"), ("PPN-4711", "PPN"), ("SS-4711", "SS")):
        ris_services.add_patient_identifiers(
            smith.patient, [ris_services.IdentifierInput(value=value, issuer="STATE", type=kind)]
        )
    auth = basic(personas.radiologist)
    for value in ("NI-4711", "PPN-4711", "SS-4711"):
        found = client.get(f"/dicomweb/studies?OtherPatientIDsSequence.PatientID={value}", **auth)
        assert _uids(found) == []
    response = client.get(
        f"/dicomweb/studies?StudyInstanceUID={smith.study_instance_uid}&includefield=all", **auth
    )
    [study] = json.loads(response.content)
    shown = [item["00100020"]["Value"][0] for item in study[OTHER_PATIENT_IDS]["Value"]]
    assert shown == ["11235813"]
