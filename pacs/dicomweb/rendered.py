"""WADO-RS rendered and thumbnail resources (PS3.18 10.4.1.1.3, 10.4.1.1.4): pixels to JPEG/PNG.

A frame is decoded with pydicom (pylibjpeg for compressed syntaxes), passed through the
modality LUT (rescale slope and intercept), then the VOI: the `window` query parameter when
given (PS3.18 8.3.5.1.4), else the stored VOI LUT or window, else the frame's range.
MONOCHROME1 is inverted; YBR becomes RGB; palette colour goes through its LUT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

from pacs.dicomweb.multipart import MediaType

JPEG = "image/jpeg"
PNG = "image/png"
RENDERED_TYPES = (JPEG, PNG)
DEFAULT_QUALITY = 90  # PS3.18 8.3.5.1.2: the origin server chooses when not asked
THUMBNAIL_SIZE = 128
MAX_VIEWPORT = 4096
LINEAR, LINEAR_EXACT, SIGMOID = "LINEAR", "LINEAR_EXACT", "SIGMOID"
VOI_FUNCTIONS = (LINEAR, LINEAR_EXACT, SIGMOID)
ANNOTATIONS = ("patient", "technique")
OUTPUT_MAX = 255.0


class RenderError(ValueError):
    """The image cannot be rendered as asked; the message says why."""


class UnacceptableMedia(RenderError):
    """The client accepts neither image/jpeg nor image/png."""


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    function: str = LINEAR


@dataclass(frozen=True)
class Rendering:
    """How to render: the media type, VOI window, viewport size and JPEG quality."""

    media_type: str = JPEG
    window: Window | None = None
    viewport: tuple[int, int] | None = None
    quality: int = DEFAULT_QUALITY
    annotation: tuple[str, ...] = ()  # "patient", "technique" (PS3.18 8.3.5.1.1)


def parse_window(text: str) -> Window:
    """The `window=center,width,function` query parameter (PS3.18 8.3.5.1.4)."""
    items = [item.strip() for item in text.split(",")]
    if len(items) not in (2, 3):
        raise RenderError("window is center,width[,function]")
    try:
        center, width = float(items[0]), float(items[1])
    except ValueError as exc:
        raise RenderError(f"window center and width must be numbers: {text[:40]!r}") from exc
    function = items[2].upper().replace("-", "_") if len(items) == 3 else LINEAR
    if function not in VOI_FUNCTIONS:
        raise RenderError("window function is linear, linear-exact or sigmoid")
    if not math.isfinite(center) or not math.isfinite(width) or width < 1:
        raise RenderError("window width must be at least 1")
    return Window(center, width, function)


def parse_viewport(text: str) -> tuple[int, int]:
    """The `viewport=vw,vh` query parameter; the image is scaled to fit, keeping its aspect."""
    items = text.split(",")
    try:
        width, height = int(items[0]), int(items[1])
    except (ValueError, IndexError) as exc:
        raise RenderError("viewport is width,height in pixels") from exc
    if not (0 < width <= MAX_VIEWPORT and 0 < height <= MAX_VIEWPORT):
        raise RenderError(f"viewport sides are 1 to {MAX_VIEWPORT} pixels")
    return width, height


def choose_media_type(accept: list[MediaType], asked: str = "") -> str:
    """The rendered media type from `accept=` or the Accept header; JPEG by default."""
    if asked:
        accept = [MediaType(item.strip().split(";")[0], {}) for item in asked.split(",")]
    if not accept:
        return JPEG
    for media in accept:
        if media.type in RENDERED_TYPES:
            return media.type
        if media.type in ("*/*", "image/*"):
            return JPEG
    raise UnacceptableMedia("rendered images are offered as image/jpeg and image/png")


def parse_rendering(params: Any, accept: list[MediaType], *, thumbnail: bool = False) -> Rendering:
    """A Rendering from the request's query parameters and Accept header."""
    media_type = choose_media_type(accept, params.get("accept", ""))
    window = parse_window(params["window"]) if params.get("window") else None
    viewport = parse_viewport(params["viewport"]) if params.get("viewport") else None
    if viewport is None and thumbnail:
        viewport = (THUMBNAIL_SIZE, THUMBNAIL_SIZE)
    quality = DEFAULT_QUALITY
    if params.get("quality"):
        try:
            quality = int(params["quality"])
        except ValueError as exc:
            raise RenderError("quality is 1 to 100") from exc
        if not 1 <= quality <= 100:
            raise RenderError("quality is 1 to 100")
    annotation = parse_annotation(params.get("annotation", ""))
    return Rendering(media_type, window, viewport, quality, annotation)


def parse_annotation(text: str) -> tuple[str, ...]:
    """The `annotation=patient,technique` query parameter (PS3.18 8.3.5.1.1)."""
    items = tuple(dict.fromkeys(item.strip().lower() for item in text.split(",") if item.strip()))
    unknown = [item for item in items if item not in ANNOTATIONS]
    if unknown:
        raise RenderError(f"annotation is patient and/or technique, not {unknown[0]!r}")
    return items


def annotation_lines(ds: Dataset, rendering: Rendering) -> list[str]:
    """The text burnt into the image for the annotations asked for."""
    lines = []
    if "patient" in rendering.annotation:
        name = str(ds.get("PatientName", "") or "").replace("^", " ").strip()
        born = str(ds.get("PatientBirthDate", "") or "")
        lines.append(" ".join(part for part in (name, str(ds.get("PatientID", "")), born) if part))
    if "technique" in rendering.annotation:
        window = rendering.window
        parts = [str(ds.get("Modality", "")), str(ds.get("SeriesDescription", "") or "")]
        if window is not None:
            parts.append(f"W {window.width:g} L {window.center:g}")
        lines.append(" ".join(part for part in parts if part))
    return [line for line in lines if line]


def voi(values: np.ndarray, window: Window) -> np.ndarray:
    """Apply WINDOW to modality values, giving 0..255 (PS3.3 C.11.2.1.2 and C.11.2.1.3)."""
    x = values.astype(np.float64)
    c, w = window.center, window.width
    if window.function == SIGMOID:
        out = OUTPUT_MAX / (1.0 + np.exp(-4.0 * (x - c) / w))
    elif window.function == LINEAR_EXACT:
        out = np.clip((x - c) / w + 0.5, 0.0, 1.0) * OUTPUT_MAX
    else:
        if w <= 1:
            out = np.where(x <= c - 0.5, 0.0, OUTPUT_MAX)
        else:
            out = np.clip(((x - (c - 0.5)) / (w - 1)) + 0.5, 0.0, 1.0) * OUTPUT_MAX
    return out


def _stretch(values: np.ndarray) -> np.ndarray:
    """Scale the frame's own range to 0..255 (no window stored, none asked)."""
    x = values.astype(np.float64)
    low, high = float(x.min()), float(x.max())
    if high <= low:
        return np.zeros_like(x)
    return (x - low) * (OUTPUT_MAX / (high - low))


def _first(value: Any) -> float:
    """The first of a multi-valued DS (several windows stored), as a float."""
    return float(value[0] if isinstance(value, MultiValue) else value)


def _stored_voi(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """The VOI the header asks for (first window or VOI LUT), or the frame's range."""
    has_window = "WindowCenter" in ds and "WindowWidth" in ds
    if not has_window and "VOILUTSequence" not in ds:
        return _stretch(values)
    if has_window and "VOILUTSequence" not in ds:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        function = str(ds.get("VOILUTFunction", LINEAR) or LINEAR).upper()
        if width >= 1:
            return voi(
                values, Window(center, width, function if function in VOI_FUNCTIONS else LINEAR)
            )
        return _stretch(values)
    return _stretch(apply_voi_lut(values, ds, index=0))


def _to_uint8_colour(frame: np.ndarray, ds: Dataset) -> np.ndarray:
    """Colour samples (RGB after pydicom's YBR conversion, or a palette's) as 8-bit RGB."""
    if str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
        frame = apply_color_lut(frame, ds)
        depth = 8 * frame.dtype.itemsize  # the palette's entries are 8 or 16 bits
    else:
        depth = int(ds.get("BitsStored", ds.BitsAllocated))
    if depth > 8:
        frame = frame.astype(np.float64) * (OUTPUT_MAX / (2**depth - 1))
    return np.rint(frame).astype(np.uint8)


def frame_pixels(ds: Dataset, number: int, rendering: Rendering) -> np.ndarray:
    """Frame NUMBER (1-based) of DS as 8-bit greyscale (H, W) or RGB (H, W, 3)."""
    if "PixelData" not in ds:
        raise RenderError("the instance has no pixel data")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if not 1 <= number <= count:
        raise RenderError(f"the instance has {count} frame(s), not {number}")
    try:
        frame = pixel_array(ds, index=number - 1) if count > 1 else ds.pixel_array
    except Exception as exc:  # a codec missing or broken data: the reason goes to the client
        raise RenderError(f"the pixel data cannot be decoded: {exc}") from exc
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if samples > 1 or photometric == "PALETTE COLOR":
        return _to_uint8_colour(frame, ds)
    values = apply_modality_lut(frame, ds)
    window = rendering.window
    out = voi(values, window) if window is not None else _stored_voi(values, ds)
    if photometric == "MONOCHROME1":
        out = OUTPUT_MAX - out
    return np.rint(out).astype(np.uint8)


def encode(pixels: np.ndarray, rendering: Rendering, lines: list[str] | None = None) -> bytes:
    """PIXELS as JPEG or PNG, scaled to fit the viewport when one is given, with LINES of
    annotation written in its top left corner."""
    image = Image.fromarray(pixels, "RGB" if pixels.ndim == 3 else "L")
    if rendering.viewport is not None:
        image.thumbnail(rendering.viewport, Image.Resampling.LANCZOS)
    if lines:
        draw = ImageDraw.Draw(image)
        white = (255, 255, 255) if image.mode == "RGB" else 255
        draw.multiline_text((4, 4), "\n".join(lines), fill=white)
    buffer = BytesIO()
    if rendering.media_type == PNG:
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="JPEG", quality=rendering.quality)
    return buffer.getvalue()


def render_file(path: Any, number: int, rendering: Rendering) -> bytes:
    """Frame NUMBER of the DICOM file at PATH, rendered as asked."""
    ds = dcmread(path)
    return encode(frame_pixels(ds, number, rendering), rendering, annotation_lines(ds, rendering))
