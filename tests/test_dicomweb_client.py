"""A real DICOMweb client (dicomweb-client, as viewers' scripts use it) against the live server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from dicomweb_client import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_user_pass
from pydicom.dataset import Dataset
from requests import Session
from requests.exceptions import HTTPError

from pacs.models import Study
from tests import dicom_factory as make
from tests.personas import PASSWORD

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def connect(live_server: Any) -> Iterator[Callable[[str], DICOMwebClient]]:
    """Return a function that gives a client logged in as a user (HTTP Basic)."""
    sessions: list[Session] = []

    def _connect(username: str) -> DICOMwebClient:
        sessions.append(create_session_from_user_pass(username, PASSWORD))
        return DICOMwebClient(url=f"{live_server.url}/dicomweb", session=sessions[-1])

    yield _connect
    for session in sessions:  # no keep-alive connection left for the server's shutdown
        session.close()


def test_store_search_retrieve(connect, personas) -> None:
    datasets = make.series(3, patient_name="Clientperson^Dee", patient_id="DWC1")
    technologist = connect(personas.technologist.username)
    stored = technologist.store_instances(datasets)
    assert len(stored.ReferencedSOPSequence) == 3
    assert "FailedSOPSequence" not in stored
    assert Study.objects.get().number_of_instances == 3

    radiologist = connect(personas.radiologist.username)
    studies = radiologist.search_for_studies(search_filters={"PatientName": "CLIENT*"})
    assert [Dataset.from_json(s).StudyInstanceUID for s in studies] == [
        datasets[0].StudyInstanceUID
    ]
    assert radiologist.search_for_studies(search_filters={"PatientID": "NOBODY"}) == []
    instances = radiologist.search_for_instances(
        study_instance_uid=datasets[0].StudyInstanceUID, fields=["all"]
    )
    assert sorted(Dataset.from_json(i).InstanceNumber for i in instances) == [1, 2, 3]

    retrieved = radiologist.retrieve_study(datasets[0].StudyInstanceUID)
    by_uid = {ds.SOPInstanceUID: ds for ds in retrieved}
    assert set(by_uid) == {ds.SOPInstanceUID for ds in datasets}
    for ds in datasets:
        assert by_uid[ds.SOPInstanceUID] == ds
        assert by_uid[ds.SOPInstanceUID].PixelData == ds.PixelData
    one = radiologist.retrieve_instance(
        datasets[1].StudyInstanceUID, datasets[1].SeriesInstanceUID, datasets[1].SOPInstanceUID
    )
    assert one == datasets[1]
    metadata = radiologist.retrieve_series_metadata(
        datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID
    )
    assert len(metadata) == 3
    assert "BulkDataURI" in metadata[0]["7FE00010"]

    with pytest.raises(HTTPError) as refused:
        connect(personas.front_desk.username).search_for_studies()
    assert refused.value.response.status_code == 403
