"""The DICOM JSON model (PS3.18 F.2) of datasets, and reading stored files for /metadata.

Plain module: no Django.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

MEDIA_TYPE = "application/dicom+json"
# Binary values longer than this are not inlined but referred to by a BulkDataURI (F.2.6).
BULK_DATA_THRESHOLD = 1024
PIXEL_DATA = 0x7FE00010

logger = logging.getLogger(__name__)


def to_json(dataset: Dataset) -> dict[str, Any]:
    """DATASET in the DICOM JSON model, every value inline."""
    return dataset.to_json_dict(bulk_data_threshold=2**31, suppress_invalid_tags=True)


def dumps_one(dataset: Dataset) -> bytes:
    """DATASET as one DICOM JSON object."""
    return json.dumps(to_json(dataset), separators=(",", ":")).encode()


def dumps(items: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    """Yield a JSON array of ITEMS, one item at a time."""
    yield b"["
    for number, item in enumerate(items):
        yield (b"," if number else b"") + json.dumps(item, separators=(",", ":")).encode()
    yield b"]"


def tag_hex(tag: int) -> str:
    return f"{tag:08X}"


# Photometric Interpretations of compressed colour pixel data that decompression turns into
# RGB: JPEG's YCbCr (PS3.5 8.2.1: YBR_FULL_422 or YBR_FULL describe the components of the
# JPEG bit stream, which a decoder converts back) and JPEG 2000's multi-component transforms
# (PS3.5 8.2.4: YBR_RCT, YBR_ICT). pydicom decodes them so (`decompress(as_rgb=True)`), and
# so does dcm4che (YBR_FULL_422 decompresses to RGB).
DECOMPRESSED_TO_RGB = frozenset({"YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT"})
RGB = "RGB"


def decompressed_photometric(photometric: str, *, compressed: bool) -> str:
    """The Photometric Interpretation of pixel data stored as PHOTOMETRIC once it is sent
    uncompressed (frames, bulk data, a transcoded instance)."""
    return RGB if compressed and photometric in DECOMPRESSED_TO_RGB else photometric


def file_metadata(
    path: Path, bulk_data_uri: Callable[[int], str], *, has_pixels: bool
) -> dict[str, Any]:
    """The stored file at PATH as DICOM JSON; large binary values become BulkDataURIs.

    Pixel data is never read: it is skipped, and referred to by its bulk data URI. That URI,
    and the frames, send compressed pixel data decompressed by default (PS3.18 8.7.3.3: Explicit
    VR Little Endian when no transfer syntax is asked for), so the Image Pixel attributes
    describe the pixels as sent uncompressed: PS3.3 C.7.6.3.1.2 has the Photometric
    Interpretation describe the pixel data as encoded, and a JPEG YBR_FULL_422 image comes out
    of its decoder as RGB. (A JPEG frame asked for in its stored syntax carries its own colour
    transform, which decoders undo whatever the attribute says.)
    """
    dataset = dcmread(path, stop_before_pixels=True)
    compressed = bool(dataset.file_meta.TransferSyntaxUID.is_compressed)
    if has_pixels and "PhotometricInterpretation" in dataset:
        stored = str(dataset.PhotometricInterpretation)
        sent = decompressed_photometric(stored, compressed=compressed)
        if sent != stored:
            dataset.PhotometricInterpretation = sent
            dataset.PlanarConfiguration = 0  # decoders interleave the samples

    def refer(element: DataElement) -> str:
        return bulk_data_uri(int(element.tag))

    result: dict[str, Any] = {}
    for element in dataset:
        # Only top-level values have a bulk data resource; values inside sequences stay inline.
        threshold = 2**31 if element.VR == "SQ" else BULK_DATA_THRESHOLD
        try:
            result[tag_hex(int(element.tag))] = element.to_json_dict(refer, threshold)
        except Exception:  # an undecodable value: left out, as suppress_invalid_tags does
            logger.warning("%s: cannot encode %s in JSON", path.name, element.tag)
    if has_pixels:
        vr = "OB" if dataset.get("BitsAllocated", 16) <= 8 else "OW"
        if not dataset.file_meta.TransferSyntaxUID.is_little_endian or compressed:
            vr = "OB"
        result[tag_hex(PIXEL_DATA)] = {"vr": vr, "BulkDataURI": bulk_data_uri(PIXEL_DATA)}
    return result
