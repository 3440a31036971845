"""Colour images over WADO-RS: what /metadata says of the pixels is what /frames and the
pixel bulk data send, so that a client reading both reconstructs the image.

A JPEG Baseline instance is stored as YBR_FULL_422 (PS3.5 8.2.1); decompressed, it is RGB.
The metadata describes the pixels as sent uncompressed (PS3.18 8.7.3.3 default; PS3.3
C.7.6.3.1.2), so it says RGB, and the frames are RGB.
"""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

import numpy as np
import pytest
from django.test import Client
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import convert_color_space

from pacs.dicomweb.dicom_json import decompressed_photometric
from tests.dicomweb_util import basic, parts, store
from tests.personas import Personas

pytestmark = pytest.mark.django_db

OCTET_STREAM = 'multipart/related; type="application/octet-stream"'
# Largest difference allowed between two JPEG decodings of one image (decoders may round the
# colour transform and the chrominance up-sampling differently).
JPEG_TOLERANCE = 3


def _testdata(name: str) -> Dataset:
    path = get_testdata_file(name)
    assert path is not None, name
    return dcmread(path)


def _instance_url(ds: Dataset) -> str:
    return (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def _content(response: Any) -> bytes:
    assert response.status_code == 200, response.content[:200]
    if response.streaming:
        return b"".join(response.streaming_content)
    return bytes(response.content)


def _attribute(metadata: dict[str, Any], tag: str) -> Any:
    return metadata[tag]["Value"][0]


def reconstruct(metadata: dict[str, Any], frame: bytes) -> np.ndarray:
    """RGB pixels of one 8-bit frame as a client makes them from the metadata alone."""
    rows, columns = _attribute(metadata, "00280010"), _attribute(metadata, "00280011")
    photometric = _attribute(metadata, "00280004")
    samples = _attribute(metadata, "00280002")
    assert samples == 3 and _attribute(metadata, "00280100") == 8
    if photometric == "YBR_FULL_422":  # native: Y Y Cb Cr for each pair of pixels
        pairs = np.frombuffer(frame[: rows * columns * 2], np.uint8).reshape(rows, columns // 2, 4)
        pixels = np.empty((rows, columns, 3), np.uint8)
        pixels[:, 0::2, 0], pixels[:, 1::2, 0] = pairs[..., 0], pairs[..., 1]
        pixels[:, :, 1] = np.repeat(pairs[..., 2], 2, axis=1)
        pixels[:, :, 2] = np.repeat(pairs[..., 3], 2, axis=1)
        return np.asarray(convert_color_space(pixels, "YBR_FULL", "RGB"))
    pixels = np.frombuffer(frame[: rows * columns * 3], np.uint8)
    if metadata.get("00280006", {}).get("Value", [0])[0] == 1:  # planar: RRR... GGG... BBB...
        pixels = pixels.reshape(3, rows, columns).transpose(1, 2, 0)
    else:
        pixels = pixels.reshape(rows, columns, 3)
    if photometric == "YBR_FULL":
        return np.asarray(convert_color_space(pixels, "YBR_FULL", "RGB"))
    assert photometric == "RGB", photometric
    return pixels


def _fetch(client: Client, auth: dict[str, str], ds: Dataset, numbers: list[int]) -> Any:
    url = _instance_url(ds)
    [metadata] = json.loads(_content(client.get(f"{url}/metadata", **auth)))
    response = client.get(
        f"{url}/frames/{','.join(map(str, numbers))}", HTTP_ACCEPT=OCTET_STREAM, **auth
    )
    frames = parts(response["Content-Type"], _content(response))
    assert all(kind.startswith("application/octet-stream") for kind, _ in frames)
    return metadata, [frame for _, frame in frames]


@pytest.mark.parametrize(
    "name",
    [
        "SC_rgb_dcmtk_+eb+cy+np.dcm",  # JPEG Baseline, YBR_FULL_422 (dcmcjpeg +eb +cy)
        "SC_rgb_jpeg_dcmtk.dcm",  # JPEG Baseline, YBR_FULL
    ],
)
def test_metadata_and_frames_of_a_ybr_jpeg_give_the_decoded_rgb(
    personas: Personas, client: Client, name: str
) -> None:
    ds = _testdata(name)
    stored_photometric = ds.PhotometricInterpretation
    expected = ds.pixel_array  # pydicom's decoding, converted to RGB
    store([ds])
    metadata, [frame] = _fetch(client, basic(personas.radiologist), ds, [1])
    assert stored_photometric.startswith("YBR")
    assert _attribute(metadata, "00280004") == "RGB"  # what the frames hold
    got = reconstruct(metadata, frame)
    assert got.shape == expected.shape
    assert int(np.abs(got.astype(int) - expected.astype(int)).max()) <= JPEG_TOLERANCE
    # The colours are right: not Y, Cb, Cr read as R, G, B.
    as_if_ybr = reconstruct({**metadata, "00280004": {"vr": "CS", "Value": ["YBR_FULL"]}}, frame)
    assert int(np.abs(as_if_ybr.astype(int) - expected.astype(int)).max()) > 20


def test_the_pixel_bulk_data_agrees_with_the_metadata_too(
    personas: Personas, client: Client
) -> None:
    ds = _testdata("SC_rgb_dcmtk_+eb+cy+np.dcm")
    expected = ds.pixel_array
    store([ds])
    auth = basic(personas.radiologist)
    [metadata] = json.loads(_content(client.get(f"{_instance_url(ds)}/metadata", **auth)))
    bulk = client.get(metadata["7FE00010"]["BulkDataURI"], **auth)
    [(_, pixels)] = parts(bulk["Content-Type"], _content(bulk))
    assert int(np.abs(reconstruct(metadata, pixels).astype(int) - expected).max()) <= 3
    # The whole instance decompressed says the same. Explicit VR Little Endian is named: by
    # default lossy pixel data are sent as stored (PS3.18 8.7.3).
    whole = client.get(
        f"/dicomweb/studies/{ds.StudyInstanceUID}",
        HTTP_ACCEPT=(
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'
        ),
        **auth,
    )
    [(_, body)] = parts(whole["Content-Type"], _content(whole))
    assert dcmread(BytesIO(body)).PhotometricInterpretation == "RGB"


def test_frames_of_a_multi_frame_ybr_jpeg(personas: Personas, client: Client) -> None:
    ds = _testdata("examples_ybr_color.dcm")  # 30 frames, JPEG Baseline, YBR_FULL_422
    expected = ds.pixel_array
    store([ds])
    metadata, frames = _fetch(client, basic(personas.radiologist), ds, [1, 30])
    for number, frame in zip((1, 30), frames, strict=True):
        got = reconstruct(metadata, frame)
        assert int(np.abs(got.astype(int) - expected[number - 1]).max()) <= JPEG_TOLERANCE


def test_native_ybr_full_422_frames_are_sent_as_stored(personas: Personas, client: Client) -> None:
    ds = _testdata("SC_ybr_full_422_uncompressed.dcm")  # sub-sampled: 2 bytes a pixel
    expected = ds.pixel_array
    store([ds])
    metadata, [frame] = _fetch(client, basic(personas.radiologist), ds, [1])
    assert _attribute(metadata, "00280004") == "YBR_FULL_422"
    assert len(frame) == ds.Rows * ds.Columns * 2
    assert int(np.abs(reconstruct(metadata, frame).astype(int) - expected).max()) <= 2


@pytest.mark.parametrize(
    "name",
    [
        "SC_rgb_dcmtk_+eb+cy+np.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "GDCMJ2K_TextGBR.dcm",  # JPEG 2000 lossless, YBR_RCT
        "SC_rgb_rle.dcm",
        "SC_ybr_full_422_uncompressed.dcm",
    ],
)
def test_the_metadata_rule_is_what_decompression_does(name: str) -> None:
    ds = _testdata(name)
    compressed = ds.file_meta.TransferSyntaxUID.is_compressed
    said = decompressed_photometric(ds.PhotometricInterpretation, compressed=compressed)
    if compressed:
        ds.decompress(as_rgb=True)
    assert said == ds.PhotometricInterpretation
