"""QIDO-RS answers checked against PS3.18's tables of returned attributes (10.6.3.3) and the
DICOM JSON model's rules (PS3.18 Annex F)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.http import QueryDict
from django.test import Client
from pydicom.datadict import dictionary_VR, tag_for_keyword

from tests import dicom_factory as make
from tests.dicomweb_util import basic, store
from tests.personas import Personas

pytestmark = pytest.mark.django_db

# PS3.18 Tables 10.6.3-3, 10.6.3-4 and 10.6.3-5, without Timezone Offset From UTC (returned
# only when known) and the Request Attributes Sequence (only when the series has one).
STUDY_ATTRIBUTES = (
    "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability", "ModalitiesInStudy",
    "ReferringPhysicianName", "RetrieveURL", "PatientName", "PatientID", "PatientBirthDate",
    "PatientSex", "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)  # fmt: skip
SERIES_ATTRIBUTES = (
    "Modality", "SeriesDescription", "RetrieveURL", "SeriesInstanceUID", "SeriesNumber",
    "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
)  # fmt: skip
INSTANCE_ATTRIBUTES = (
    "SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "RetrieveURL", "InstanceNumber",
    "Rows", "Columns", "BitsAllocated", "NumberOfFrames",
)  # fmt: skip
NUMBER_VRS = {"IS", "DS", "US", "UL", "SS", "SL", "FL", "FD"}


def tag(keyword: str) -> str:
    return f"{tag_for_keyword(keyword):08X}"


def check_json_model(item: dict[str, Any]) -> None:
    """PS3.18 F.2: tags as 8 upper-case hex digits, each with its VR; values as their types."""
    for key, attribute in item.items():
        assert len(key) == 8 and key == key.upper() and int(key, 16) >= 0, key
        assert attribute["vr"] == dictionary_VR(int(key, 16)), key
        if "Value" not in attribute:
            continue  # F.2.5: an empty attribute has no Value
        values = attribute["Value"]
        assert isinstance(values, list) and values, key
        if attribute["vr"] == "PN":
            assert all(set(value) <= {"Alphabetic", "Ideographic", "Phonetic"} for value in values)
        elif attribute["vr"] in NUMBER_VRS:
            assert all(isinstance(value, int | float) for value in values), key
        elif attribute["vr"] != "SQ":
            assert all(isinstance(value, str) for value in values), key


def test_every_level_returns_the_attributes_ps3_18_requires(
    personas: Personas, client: Client
) -> None:
    datasets = make.series(2, patient_name="Conform^Ada", patient_id="PC1", study_date="20260301")
    study = store(datasets)
    auth = basic(personas.radiologist)
    base = f"/dicomweb/studies/{study.study_instance_uid}"

    [found] = json.loads(client.get("/dicomweb/studies?PatientID=PC1", **auth).content)
    series = json.loads(client.get(f"{base}/series", **auth).content)
    instances = json.loads(
        client.get(f"{base}/series/{datasets[0].SeriesInstanceUID}/instances", **auth).content
    )
    for items, required in (
        ([found], STUDY_ATTRIBUTES),
        (series, SERIES_ATTRIBUTES),
        (instances, INSTANCE_ATTRIBUTES),
    ):
        for item in items:
            check_json_model(item)
            missing = [keyword for keyword in required if tag(keyword) not in item]
            assert not missing, missing
    assert found[tag("InstanceAvailability")]["Value"] == ["ONLINE"]
    assert found[tag("RetrieveURL")]["Value"][0].endswith(base)  # PS3.18 10.6.3.3.1
    assert found[tag("PatientName")]["Value"] == [{"Alphabetic": "Conform^Ada"}]
    assert found[tag("NumberOfStudyRelatedInstances")]["Value"] == [2]
    first = instances[0]
    assert first[tag("BitsAllocated")]["Value"] == [int(datasets[0].BitsAllocated)]
    assert first[tag("InstanceAvailability")]["Value"] == ["ONLINE"]
    assert first[tag("RetrieveURL")]["Value"][0].endswith(
        f"{base}/series/{datasets[0].SeriesInstanceUID}/instances/{first[tag('SOPInstanceUID')]['Value'][0]}"
    )


def test_results_are_what_pydicom_would_write_for_the_same_values(personas: Personas) -> None:
    from pydicom.dataset import Dataset

    from pacs.dicomweb import qido
    from pacs.models import Study
    from pacs.selectors import level_rows, records_of, response_identifier

    store(make.series(2, patient_name="Yamada^Tarou=山田^太郎=やまだ^たろう", charset="ISO_IR 192"))
    store(make.series(1, patient_name="Müller^Jörg", patient_id="PC2", modality="MR"))
    store(make.series(1, patient_name="", patient_id="PC3", accession=""))
    for level in ("STUDY", "SERIES", "IMAGE"):
        parsed = qido.parse_search(QueryDict("includefield=all"), level, {}, top="STUDY")
        query = qido.build_query(parsed.identifier, qido.STUDY_ROOT)
        rows = list(level_rows(query, Study.objects.all()))
        assert rows
        for row in rows:
            records = records_of(row, level)
            ours = qido.json_item(records, parsed.keys, "http://testserver/x")
            theirs: Dataset = response_identifier(records, parsed.keys)
            theirs.RetrieveURL = "http://testserver/x"
            expected = theirs.to_json_dict()
            for attribute in expected.values():
                # PS3.18 F.2.5: an empty attribute has no "Value"; pydicom writes an empty
                # sequence as "Value": [].
                if attribute.get("Value") == []:
                    del attribute["Value"]
            assert ours == expected, level
