"""WADO-RS (PS3.18 10.4) and WADO-URI (PS3.18 9): which stored instances, which bytes.

An instance goes out in the transfer syntax asked for: with no transfer-syntax parameter the
default, Explicit VR Little Endian (PS3.18 8.7.3, Table 8.7.3-2), except pixel data stored
lossy, which is sent as stored; with `transfer-syntax=*` as stored (PS3.18 8.7.3.5.2), except
Implicit VR Little Endian and Big Endian, which the web may not use (8.7.3); a named syntax is
that one, decompressing when need be. The stored file is sent byte for byte whenever it already
is in that syntax; otherwise it is rewritten, one instance in memory at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy
from django.db.models import QuerySet
from pydicom import dcmread
from pydicom.encaps import generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacs.dicomweb.multipart import MediaType, file_chunks
from pacs.models import Instance, Study
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


# No transfer-syntax parameter: the media type's default, which for application/dicom is
# Explicit VR Little Endian (PS3.18 8.7.3, Table 8.7.3-2), with 8.7.3's exceptions.
DEFAULT_SYNTAX = ""
EXPLICIT_VR_LITTLE_ENDIAN = str(ExplicitVRLittleEndian)
# PS3.18 8.7.3: Implicit VR Little Endian and Explicit VR Big Endian "shall not be used with
# Web Services"; an instance stored in one goes out as Explicit VR Little Endian.
NOT_FOR_THE_WEB = frozenset({str(ImplicitVRLittleEndian), str(ExplicitVRBigEndian)})
# The syntaxes whose pixel data may be lossy (PS3.6 Table A-1, those not "Lossless"): with no
# transfer-syntax parameter an instance stored in one is sent as stored, not decompressed into
# the default (PS3.18 8.7.3, "only access to the pixel data in lossy compressed form").
LOSSY = frozenset(
    {
        "1.2.840.10008.1.2.4.50",  # JPEG Baseline
        "1.2.840.10008.1.2.4.51",  # JPEG Extended
        "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
        "1.2.840.10008.1.2.4.93",  # JPEG 2000 Part 2 Multi-component
        "1.2.840.10008.1.2.4.111",  # JPEG XL JPEG Recompression
        "1.2.840.10008.1.2.4.112",  # JPEG XL
        "1.2.840.10008.1.2.4.203",  # High-Throughput JPEG 2000
        *(f"1.2.840.10008.1.2.4.{n}" for n in range(100, 109)),  # MPEG-2, MPEG-4, HEVC
        *(f"1.2.840.10008.1.2.4.{n}.1" for n in range(100, 107)),  # their fragmentable forms
    }
)
# The longest value an Explicit VR Little Endian file can hold (PS3.5 7.1.2: a 32-bit length,
# even, 0xFFFFFFFF being "undefined").
MAX_NATIVE_LENGTH = 0xFFFFFFFE


def _quality(media: MediaType) -> float:
    try:
        return float(media.parameters.get("q", "1"))
    except ValueError:
        return 1.0


def dicom_syntaxes(accept: list[MediaType]) -> list[str]:
    """The transfer syntaxes the Accept ranges take application/dicom in, preferred first.

    "*" stands for any (as stored), DEFAULT_SYNTAX for a range without a transfer-syntax
    parameter. Raises NotAcceptable when no range allows application/dicom.
    """
    if not accept:
        return [DEFAULT_SYNTAX]
    wanted = []
    # RFC 9110 12.5.1: ranges by their q value, the order given among equals; q=0 refuses.
    for media in sorted(accept, key=_quality, reverse=True):
        inner = media.parameters.get("type", "") if media.type == "multipart/related" else ""
        kind = inner or media.type
        dicom = kind in ("application/dicom", "*/*", "application/*", "multipart/related")
        if dicom and _quality(media) > 0:
            wanted.append(media.parameters.get("transfer-syntax", DEFAULT_SYNTAX))
    if not wanted:
        raise NotAcceptable('this resource is sent as multipart/related; type="application/dicom"')
    return wanted


def _encapsulated(syntax: str) -> bool:
    """Whether SYNTAX encapsulates its pixel data; a syntax pydicom does not know, assumed so."""
    try:
        return bool(UID(syntax).is_encapsulated)
    except ValueError:
        return True


def decodable(syntax: str) -> bool:
    """Whether an instance stored in SYNTAX can be rewritten in Explicit VR Little Endian."""
    if syntax == ExplicitVRBigEndian:
        # pydicom writes values in the byte order they were read in: it refuses to turn a
        # big endian file into a little endian one, and its words would need swapping.
        return False
    if not _encapsulated(syntax):
        return True  # native or deflated: pydicom re-encodes it
    try:
        return bool(get_decoder(UID(syntax)).is_available)
    except (NotImplementedError, ValueError):
        return False


def _too_long_to_decompress(instance: Instance) -> bool:
    # Samples per pixel is not indexed: taken as 3, the most there is (PS3.3 C.7.6.3.1.1).
    sample = -(-(instance.bits_allocated or 8) // 8)
    frame = (instance.rows or 0) * (instance.columns or 0) * 3 * sample
    return frame * (instance.number_of_frames or 1) > MAX_NATIVE_LENGTH


def sent_syntax(instance: Instance, wanted: list[str]) -> str | None:
    """The transfer syntax INSTANCE goes out in for the syntaxes WANTED; None if none can be made.

    Only the index is read: a whole study is planned before its first byte is sent.
    """
    stored = instance.transfer_syntax_uid
    for syntax in wanted:
        if syntax == ANY_SYNTAX:  # PS3.18 8.7.3.5.2: any, so as stored where the web allows
            # A retired big endian file goes as stored: the client took any syntax, and
            # it cannot be rewritten (decodable).
            return (
                EXPLICIT_VR_LITTLE_ENDIAN
                if stored in NOT_FOR_THE_WEB and decodable(stored)
                else stored
            )
        if syntax == DEFAULT_SYNTAX and (
            stored in LOSSY or (_encapsulated(stored) and _too_long_to_decompress(instance))
        ):
            return stored  # PS3.18 8.7.3's exceptions to the default
        if syntax == stored and stored not in NOT_FOR_THE_WEB:
            return stored
        if syntax in (DEFAULT_SYNTAX, EXPLICIT_VR_LITTLE_ENDIAN) and decodable(stored):
            return EXPLICIT_VR_LITTLE_ENDIAN
    return None


def offered_syntaxes(instance: Instance) -> list[str]:
    """The transfer syntaxes INSTANCE can be sent in, for a 406 to name."""
    stored = instance.transfer_syntax_uid
    offered = [EXPLICIT_VR_LITTLE_ENDIAN] if decodable(stored) else []
    if (stored not in NOT_FOR_THE_WEB or not offered) and stored not in offered:
        offered.append(stored)  # a big endian file: with transfer-syntax=* only
    return offered


def instance_part(
    instance: Instance, syntax: str, storage: FileStorage
) -> tuple[dict[str, str], Iterator[bytes]]:
    """Headers and body chunks of one instance as an application/dicom part in SYNTAX, one
    of sent_syntax's answers: the stored file byte for byte when it already is in SYNTAX."""
    headers = {
        "Content-Type": f"application/dicom; transfer-syntax={syntax}",
        "Content-Location": instance_location(instance),
    }
    if syntax == instance.transfer_syntax_uid:
        return headers, file_chunks(lambda: storage.open(instance.file_path))
    return headers, _transcoded(instance, UID(syntax), storage)


def _transcoded(instance: Instance, syntax: UID, storage: FileStorage) -> Iterator[bytes]:
    """The instance rewritten in SYNTAX (uncompressed), one instance in memory at a time.

    Values are kept as they are: only the file meta and the encoding change (an element an
    implicit VR file gives no VR for, a private one, is written as UN with its bytes).
    """
    dataset = dcmread(storage.path(instance.file_path))
    if dataset.file_meta.TransferSyntaxUID.is_encapsulated:
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
    frames = [pixels[(number - 1) * size : number * size] for number in numbers]
    if dataset.file_meta.TransferSyntaxUID == ExplicitVRBigEndian and bits > 8:
        # Native big endian words (PS3.5 A.3): frames are sent little endian.
        word = f"u{bits // 8}"
        frames = [
            numpy.frombuffer(frame, dtype=f">{word}").astype(f"<{word}").tobytes()
            for frame in frames
        ]
    return frames


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
_UNCOMPRESSED_FRAMES = EXPLICIT_VR_LITTLE_ENDIAN
OCTET_STREAM = "application/octet-stream"
ANY_MEDIA = "*/*"
ANY_IMAGE = "image/*"


def frame_ranges(accept: list[MediaType]) -> list[tuple[str, str]]:
    """The (media type, transfer syntax) pairs the Accept ranges take frames in, preferred
    first; the syntax "*" for any. No Accept: uncompressed octet-stream (PS3.18 8.7.3.3)."""
    if not accept:
        return [(OCTET_STREAM, _UNCOMPRESSED_FRAMES)]
    wanted = []
    for media in sorted(accept, key=_quality, reverse=True):
        if _quality(media) <= 0:
            continue
        kind = media.parameters.get("type", "") if media.type == "multipart/related" else ""
        kind = (kind or media.type).replace("image/x-dicom-rle", "image/dicom-rle")
        if kind == "multipart/related":
            kind = ANY_MEDIA
        syntax = media.parameters.get("transfer-syntax", "")
        if kind in (OCTET_STREAM, ANY_MEDIA):
            wanted.append((kind, syntax or _UNCOMPRESSED_FRAMES))
        elif kind in _DEFAULT_SYNTAX:
            wanted.append((kind, syntax or _DEFAULT_SYNTAX[kind]))
        elif kind == ANY_IMAGE:
            wanted.append((kind, syntax or ANY_SYNTAX))
    if not wanted:
        raise NotAcceptable("frames are sent as application/octet-stream or image/* parts")
    return wanted


def _frames_as_stored(kind: str, syntax: str, stored: str) -> bool:
    """Whether the range (KIND, SYNTAX) takes frames compressed in STORED, as they are."""
    media = FRAME_MEDIA_TYPES.get(stored)
    if media is None or syntax not in (ANY_SYNTAX, stored):
        return False
    return kind in (media, ANY_IMAGE, ANY_MEDIA)


def frame_parts(
    instance: Instance, numbers: list[int], accept: list[MediaType], storage: FileStorage
) -> list[tuple[str, bytes]]:
    """The (Content-Type, bytes) of frames NUMBERS of INSTANCE, in a syntax ACCEPT takes:
    as stored when its image/* media type is asked for, else decompressed to native little
    endian.

    application/octet-stream is uncompressed pixel data only (PS3.18 8.7.3.3.1, Table
    8.7.3-4); compressed frames have their own media types (8.7.3.3.2, Table 8.7.3-5). So
    `type="application/octet-stream"; transfer-syntax=*` is any uncompressed syntax, not the
    stored compressed one: D. Clunie on OHIF issue 4382 (returning compressed streams as
    application/octet-stream "is not correct"; with "*" it "should only match uncompressed
    transfer syntaxes").
    """
    stored = instance.transfer_syntax_uid
    for kind, syntax in frame_ranges(accept):
        if _frames_as_stored(kind, syntax, stored):
            content_type = f"{FRAME_MEDIA_TYPES[stored]}; transfer-syntax={stored}"
            return [(content_type, frame) for frame in stored_frames(instance, numbers, storage)]
        if kind in (OCTET_STREAM, ANY_MEDIA) and syntax in (ANY_SYNTAX, _UNCOMPRESSED_FRAMES):
            content_type = f"{OCTET_STREAM}; transfer-syntax={_UNCOMPRESSED_FRAMES}"
            frames = uncompressed_frames(instance, numbers, storage)
            return [(content_type, frame) for frame in frames]
    offered = f"{OCTET_STREAM} ({_UNCOMPRESSED_FRAMES})"
    if stored in FRAME_MEDIA_TYPES:
        offered += f" or {FRAME_MEDIA_TYPES[stored]} ({stored}, as stored)"
    raise NotAcceptable(
        f"{instance.sop_instance_uid} is stored as {stored}: its frames can be sent as {offered}"
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
