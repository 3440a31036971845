"""WADO-RS (PS3.18 10.4) and WADO-URI (PS3.18 9): which stored instances, which bytes.

Instances go out as stored, byte for byte, when the client accepts their transfer syntax
(or any, `transfer-syntax=*`); otherwise decompressed to the uncompressed syntax asked for
(Explicit VR Little Endian by default, PS3.18 8.7.3.5.2), one instance in memory at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from django.db.models import QuerySet
from pydicom import dcmread
from pydicom.encaps import generate_frames
from pydicom.uid import UID, ExplicitVRLittleEndian

from pacs.dicomweb.multipart import MediaType, file_chunks
from pacs.models import Instance, Study
from pacs.retrieve import UNCOMPRESSED
from pacs.storage import FileStorage

logger = logging.getLogger(__name__)

ANY_SYNTAX = "*"


class NotAcceptable(ValueError):
    """The client accepts no representation this archive can make."""


@dataclass(frozen=True)
class Selection:
    study_instance_uid: str
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None

    def filters(self) -> dict[str, str]:
        found = {"series__study__study_instance_uid": self.study_instance_uid}
        if self.series_instance_uid:
            found["series__series_instance_uid"] = self.series_instance_uid
        if self.sop_instance_uid:
            found["sop_instance_uid"] = self.sop_instance_uid
        return found


def selected_instances(selection: Selection, visible: QuerySet[Study]) -> list[Instance]:
    """The instances of SELECTION among VISIBLE studies, in series and instance order."""
    return list(
        Instance.objects.filter(
            series__study__in=visible.order_by().values("pk"), **selection.filters()
        )
        .select_related("series__study__patient")
        .order_by("series__series_number", "series_id", "instance_number", "id")
    )


def exists(selection: Selection) -> Study | None:
    """The study of SELECTION if anything of it is stored at all (to audit a refusal)."""
    instance = (
        Instance.objects.filter(**selection.filters()).select_related("series__study").first()
    )
    return instance.series.study if instance is not None else None


def dicom_syntax(accept: list[MediaType]) -> str:
    """The transfer syntax to send application/dicom in, from the Accept header's ranges.

    Returns "*" for "as stored"; raises NotAcceptable when no range allows application/dicom.
    """
    if not accept:
        return ANY_SYNTAX
    for media in accept:
        inner = media.parameters.get("type", "") if media.type == "multipart/related" else ""
        kind = inner or media.type
        if kind in ("application/dicom", "*/*", "application/*", "multipart/related"):
            syntax = media.parameters.get("transfer-syntax", "")
            if not syntax:
                return str(ExplicitVRLittleEndian) if kind == "application/dicom" else ANY_SYNTAX
            return syntax  # a compressed one: only instances stored in it can be sent
    raise NotAcceptable('this resource is sent as multipart/related; type="application/dicom"')


def instance_part(
    instance: Instance, syntax: str, storage: FileStorage
) -> tuple[dict[str, str], Iterator[bytes]]:
    """Headers and body chunks of one instance as an application/dicom part."""
    stored = instance.transfer_syntax_uid
    location = instance_location(instance)
    if syntax in (ANY_SYNTAX, stored):
        headers = {
            "Content-Type": f"application/dicom; transfer-syntax={stored}",
            "Content-Location": location,
        }
        return headers, file_chunks(lambda: storage.open(instance.file_path))
    if syntax not in UNCOMPRESSED:
        raise NotAcceptable(
            f"{instance.sop_instance_uid} is stored as {stored}, not in {syntax}; "
            "ask for an uncompressed syntax or transfer-syntax=*"
        )
    headers = {
        "Content-Type": f"application/dicom; transfer-syntax={syntax}",
        "Content-Location": location,
    }
    return headers, _transcoded(instance, UID(syntax), storage)


def _transcoded(instance: Instance, syntax: UID, storage: FileStorage) -> Iterator[bytes]:
    dataset = dcmread(storage.path(instance.file_path))
    if dataset.file_meta.TransferSyntaxUID.is_compressed:
        dataset.decompress(
            as_rgb=True
        )  # sets RGB; raises for a syntax without a decoder: the stream stops
    dataset.file_meta.TransferSyntaxUID = syntax
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    yield buffer.getvalue()


class FrameError(ValueError):
    """The frames asked for cannot be sent; the message says why."""


def frame_numbers(text: str) -> list[int]:
    """The frame list of a /frames URL: 1-based numbers separated by commas (PS3.18 8.3.1)."""
    try:
        numbers = [int(item) for item in text.split(",")]
    except ValueError as exc:
        raise FrameError(f"not a list of frame numbers: {text[:40]!r}") from exc
    if any(number < 1 for number in numbers):
        raise FrameError("frame numbers start at 1")
    return numbers


def uncompressed_frames(
    instance: Instance, numbers: list[int], storage: FileStorage
) -> list[bytes]:
    """The frames NUMBERS of INSTANCE, decompressed, as native little endian pixel data."""
    dataset = dcmread(storage.path(instance.file_path))
    if "PixelData" not in dataset:
        raise FrameError("the instance has no pixel data")
    if dataset.file_meta.TransferSyntaxUID.is_compressed:
        # To RGB, as the metadata says (dicom_json.decompressed_photometric).
        dataset.decompress(as_rgb=True)
    bits = int(dataset.BitsAllocated)
    if bits % 8:
        raise FrameError("frames of single-bit pixel data are not offered")
    samples = int(dataset.SamplesPerPixel)
    if dataset.get("PhotometricInterpretation") == "YBR_FULL_422":
        # Stored natively sub-sampled: two chrominance values per two pixels, so two samples
        # a pixel (PS3.3 C.7.6.3.1.2).
        samples = 2
    size = int(dataset.Rows) * int(dataset.Columns) * samples * bits // 8
    _frame_count(dataset, numbers)
    pixels = dataset.PixelData
    return [pixels[(number - 1) * size : number * size] for number in numbers]


# PS3.18 Table 8.7.3-5: the media type of a compressed frame, by transfer syntax.
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
# The syntax a bare compressed media type stands for (PS3.18 Table 8.7.3-5, the defaults).
_DEFAULT_SYNTAX = {
    "image/jpeg": "1.2.840.10008.1.2.4.70",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jpx": "1.2.840.10008.1.2.4.92",
    "image/dicom-rle": "1.2.840.10008.1.2.5",
    "image/x-dicom-rle": "1.2.840.10008.1.2.5",
}
_UNCOMPRESSED_FRAMES = str(ExplicitVRLittleEndian)


def frame_syntaxes(accept: list[MediaType]) -> list[str]:
    """The transfer syntaxes the Accept ranges take frames in, in order; "*" for as stored.

    No Accept, or octet-stream without a syntax: uncompressed (PS3.18 8.7.3.3.2).
    """
    if not accept:
        return [_UNCOMPRESSED_FRAMES]
    wanted = []
    for media in accept:
        kind = media.parameters.get("type", "") if media.type == "multipart/related" else ""
        kind = kind or media.type
        syntax = media.parameters.get("transfer-syntax", "")
        if kind in ("application/octet-stream", "*/*", "multipart/related"):
            wanted.append(syntax or _UNCOMPRESSED_FRAMES)
        elif kind in _DEFAULT_SYNTAX:
            wanted.append(syntax or _DEFAULT_SYNTAX[kind])
    if not wanted:
        raise NotAcceptable("frames are sent as application/octet-stream or image/* parts")
    return wanted


def frame_parts(
    instance: Instance, numbers: list[int], accept: list[MediaType], storage: FileStorage
) -> list[tuple[str, bytes]]:
    """The (Content-Type, bytes) of frames NUMBERS of INSTANCE, in a syntax ACCEPT takes:
    as stored when it is asked for (or "*"), else decompressed to native little endian."""
    stored = instance.transfer_syntax_uid
    for syntax in frame_syntaxes(accept):
        if syntax in (ANY_SYNTAX, stored) and stored in FRAME_MEDIA_TYPES:
            media = FRAME_MEDIA_TYPES[stored]
            content_type = f"{media}; transfer-syntax={stored}"
            return [(content_type, frame) for frame in stored_frames(instance, numbers, storage)]
        if syntax in (ANY_SYNTAX, _UNCOMPRESSED_FRAMES):
            content_type = f"application/octet-stream; transfer-syntax={_UNCOMPRESSED_FRAMES}"
            frames = uncompressed_frames(instance, numbers, storage)
            return [(content_type, frame) for frame in frames]
    raise NotAcceptable(
        f"{instance.sop_instance_uid} is stored as {stored}: ask for its frames in that "
        "syntax, uncompressed, or transfer-syntax=*"
    )


def _frame_count(dataset: Any, numbers: list[int]) -> int:
    count = int(dataset.get("NumberOfFrames", 1) or 1)
    beyond = [number for number in numbers if number > count]
    if beyond:
        raise FrameError(f"the instance has {count} frame(s), not {beyond[0]}")
    return count


def stored_frames(instance: Instance, numbers: list[int], storage: FileStorage) -> list[bytes]:
    """The frames NUMBERS of a compressed INSTANCE as stored: each frame's fragments joined."""
    dataset = dcmread(storage.path(instance.file_path))
    if "PixelData" not in dataset:
        raise FrameError("the instance has no pixel data")
    count = _frame_count(dataset, numbers)
    frames = list(generate_frames(dataset.PixelData, number_of_frames=count))
    return [frames[number - 1] for number in numbers]


def instance_location(instance: Instance) -> str:
    series = instance.series
    return (
        f"/dicomweb/studies/{series.study.study_instance_uid}/series/"
        f"{series.series_instance_uid}/instances/{instance.sop_instance_uid}"
    )
