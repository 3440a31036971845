"""Helpers for the DICOMweb tests: storing through the service, HTTP Basic, multipart bodies."""

from __future__ import annotations

import base64
import email.parser
import email.policy
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from pacs.models import Study
from pacs.services import ingest_instance
from tests import dicom_factory as make
from tests.personas import PASSWORD

BOUNDARY = "test-boundary-1234"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def store(datasets: list[Dataset]) -> Study:
    """Store DATASETS the way the Storage SCP does; return the first one's study."""
    for ds in datasets:
        ingest_instance(
            make.encoded(ds), transfer_syntax=str(ds.file_meta.TransferSyntaxUID), calling_ae="CT1"
        )
    return Study.objects.get(study_instance_uid=datasets[0].StudyInstanceUID)


def basic(user: Any, password: str = PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{user.username}:{password}".encode()).decode()
    return {"HTTP_AUTHORIZATION": f"Basic {token}"}


def part10(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def multipart_body(bodies: list[bytes], content_type: str = "application/dicom") -> bytes:
    out = b""
    for body in bodies:
        out += f"--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode() + body + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def parts(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """The parts of a multipart response, read by the standard library's MIME parser."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    assert message.is_multipart()
    return [
        (part.get("Content-Type", ""), part.get_payload(decode=True))  # type: ignore[misc]
        for part in message.iter_parts()  # type: ignore[attr-defined]
    ]


def dataset(body: bytes) -> Dataset:
    return dcmread(BytesIO(body))
