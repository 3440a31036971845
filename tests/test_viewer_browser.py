"""The diagnostic viewer in Debian's Chromium: a synthetic CT renders, W/L, length, MPR."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset

from core.services import sync_roles
from pacs.services import ingest_instance
from tests import dicom_factory as make
from tests.browser import browser_page, screenshot
from tests.personas import PASSWORD, make_personas

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SLICES = 12
SIZE = 64
SLICE_GAP_MM = 2.0

# The number of bright, non-black pixels of the first canvas of the Nth viewport, their sum
# (changes with the grey levels) and their moment along x (changes when the image turns).
CANVAS_STATS = """(index) => {
  const canvas = document.querySelectorAll('.viewer-viewport canvas')[index];
  if (!canvas || !canvas.width) return {lit: 0, sum: 0, moment: 0};
  const context = canvas.getContext('2d');
  const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
  let lit = 0, sum = 0, moment = 0;
  for (let i = 0; i < data.length; i += 4) {
    sum += data[i];
    moment += data[i] * ((i / 4) % canvas.width);
    if (data[i] > 10) lit += 1;
  }
  return {lit, sum, moment};
}"""


def ct_volume(study_uid: str, *, patient_name: str, accession: str, date: str) -> list[Dataset]:
    """A 64x64 CT volume: a soft-tissue disc in air with a bone sphere in its middle."""
    series_uid, frame_uid = make.uid(), make.uid()
    y, x = np.mgrid[0:SIZE, 0:SIZE] - SIZE / 2
    datasets = []
    for index in range(SLICES):
        z = (index - SLICES / 2) * SLICE_GAP_MM
        hu = np.full((SIZE, SIZE), -1000, dtype=np.int16)
        hu[x**2 + y**2 < 28**2] = 40 + (x[x**2 + y**2 < 28**2] * 2).astype(np.int16)
        hu[x**2 + y**2 + z**2 < 12**2] = 700
        ds = make.ct_instance(
            study_uid=study_uid,
            series_uid=series_uid,
            number=index + 1,
            size=SIZE,
            patient_name=patient_name,
            accession=accession,
            study_date=date,
        )
        ds.PixelRepresentation = 1
        ds.BitsStored, ds.HighBit = 16, 15
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = hu.tobytes()
        ds.FrameOfReferenceUID = frame_uid
        ds.ImagePositionPatient = [-SIZE / 2, -SIZE / 2, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [1, 1]
        ds.SliceThickness = SLICE_GAP_MM
        ds.SliceLocation = z
        ds.WindowCenter, ds.WindowWidth = 40, 400
        datasets.append(ds)
    return datasets


def _store(datasets: list[Dataset]) -> None:
    for ds in datasets:
        ingest_instance(make.encoded(ds), transfer_syntax=str(ds.file_meta.TransferSyntaxUID))


def _stats(page: Any, index: int = 0) -> dict[str, int]:
    return page.evaluate(CANVAS_STATS, index)


def _wait_lit(page: Any, index: int = 0) -> None:
    page.wait_for_function(f"({CANVAS_STATS})({index}).lit > 100")


def test_radiologist_reads_a_ct_in_the_viewer(live_server) -> None:  # type: ignore[no-untyped-def]
    sync_roles()
    make_personas()
    study_uid = make.uid()
    _store(ct_volume(study_uid, patient_name="Viewcase^Alex", accession="V1", date="20260301"))
    _store(ct_volume(make.uid(), patient_name="Viewcase^Alex", accession="V0", date="20250301"))
    console: list[str] = []
    with browser_page() as page:
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
        page.goto(f"{live_server.url}/login/")
        page.fill("#id_username", "rad")
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{live_server.url}/**")
        page.goto(f"{live_server.url}/viewer/{study_uid}/")
        page.wait_for_selector(".viewer-viewport canvas")
        try:
            _wait_lit(page)
        finally:
            screenshot(page, "viewer-first-image")
            print("\n".join(console))
        # Series thumbnails come from the rendered-thumbnail resource (never enlarged).
        assert page.evaluate("document.querySelector('#viewer-series img').naturalWidth") == SIZE
        assert "Viewcase Alex" in page.text_content(".viewer-overlay .tl")
        assert "Im 1/12" in page.text_content(".viewer-overlay .bl")
        wl_before = page.text_content(".viewer-overlay .br")
        assert "W 400 L 40" in wl_before

        # Window/level: a drag changes the pixels and the overlay.
        before = _stats(page)
        box = page.locator(".viewer-viewport").bounding_box()
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(cx, cy)
        page.mouse.down()
        page.mouse.move(cx + 120, cy + 60, steps=8)
        page.mouse.up()
        page.wait_for_function(
            f"document.querySelector('.viewer-overlay .br').textContent !== {wl_before!r}"
        )
        assert _stats(page)["sum"] != before["sum"]
        screenshot(page, "viewer-window-level")

        # Preset, then the wheel scrolls the stack.
        page.select_option("#preset", "bone")
        page.wait_for_function(
            "document.querySelector('.viewer-overlay .br').textContent.includes('W 1500 L 300')"
        )
        page.mouse.move(cx, cy)
        page.mouse.wheel(0, 300)
        page.wait_for_function(
            "!document.querySelector('.viewer-overlay .bl').textContent.includes('Im 1/')"
        )

        # A length measurement shows its value.
        page.click("[data-tool=Length]")
        page.mouse.move(cx - 100, cy)
        page.mouse.down()
        page.mouse.move(cx + 100, cy, steps=8)
        page.mouse.up()
        page.wait_for_selector("#measurements li")
        assert "mm" in page.text_content("#measurements li")
        screenshot(page, "viewer-length")

        # A rectangle ROI gives its mean and SD in HU.
        page.click("[data-tool=RectangleROI]")
        page.mouse.move(cx - 40, cy - 40)
        page.mouse.down()
        page.mouse.move(cx + 40, cy + 40, steps=8)
        page.mouse.up()
        page.wait_for_function("document.querySelector('#measurements').textContent.includes('HU')")

        # An ellipse ROI, and an angle of three clicks.
        page.click("[data-tool=EllipticalROI]")
        page.mouse.move(cx + 60, cy + 60)
        page.mouse.down()
        page.mouse.move(cx + 120, cy + 120, steps=8)
        page.mouse.up()
        page.wait_for_function(
            "document.querySelector('#measurements').textContent.includes('Ellipse: mean')"
        )
        page.click("[data-tool=Angle]")
        page.mouse.move(cx - 150, cy - 100)
        page.mouse.down()
        page.mouse.move(cx - 50, cy - 100, steps=8)
        page.mouse.up()
        page.mouse.move(cx - 50, cy - 200, steps=8)
        page.mouse.down()
        page.mouse.up()
        page.wait_for_selector("#measurements li[data-complete]:has-text('Angle 90')")
        screenshot(page, "viewer-measurements")
        page.click("[data-tool=WindowLevel]")

        # Invert, flip and rotate change the picture; reset brings back the stored window.
        for button, measure in (("#invert", "sum"), ("#flip-h", "moment"), ("#rotate", "moment")):
            before = _stats(page)
            page.click(button)
            page.wait_for_function(f"({CANVAS_STATS})(0).{measure} !== {before[measure]}")
        page.click("#reset")
        page.wait_for_function(
            "document.querySelector('.viewer-overlay .br').textContent.includes('W 400 L 40')"
        )

        # The prior study side by side.
        page.click("[data-prior]")
        page.wait_for_function(
            "document.querySelectorAll('.viewer-viewport[data-rendered=true]').length === 2"
        )
        _wait_lit(page, 1)
        # Scrolling the current study scrolls the prior along.
        page.mouse.move(cx - 150, cy)
        page.mouse.wheel(0, 300)
        page.wait_for_function(
            "!document.querySelectorAll('.viewer-overlay .bl')[1].textContent.includes('Im 1/')"
        )
        screenshot(page, "viewer-compare")

        # MPR: three views of the volume.
        page.click("#stack")
        page.wait_for_function("!document.querySelector('#mpr').disabled")
        page.click("#mpr")
        page.wait_for_function(
            "document.querySelectorAll('.viewer-viewport[data-orientation]').length === 3"
        )
        for index in range(3):
            _wait_lit(page, index)
        overlays = page.locator(".viewer-overlay .bl").all_text_contents()
        assert [text.split()[0] for text in overlays] == ["axial", "sagittal", "coronal"]
        assert page.evaluate("document.body.dataset.renderer") == "webgl"
        screenshot(page, "viewer-mpr")


CENTRE_PIXEL = """(index) => {
  const canvas = document.querySelectorAll('.viewer-viewport canvas')[index];
  const context = canvas.getContext('2d');
  return Array.from(
    context.getImageData(canvas.width >> 1, canvas.height >> 1, 1, 1).data.slice(0, 3)
  );
}"""


CODECS = (
    "charlswasm_decode.wasm",
    "openjpegwasm_decode.wasm",
    "libjpegturbowasm_decode.wasm",
    "openjphjs.wasm",
)
COMPILES = """async (url) => {
  const response = await fetch(url);
  if (!response.ok || response.headers.get('Content-Type') !== 'application/wasm') return false;
  return WebAssembly.validate(await response.arrayBuffer());
}"""


def colour_instance(
    study_uid: str, series_number: int, photometric: str, colour: tuple[int, int, int], frames: int
) -> Dataset:
    """A 32x32 colour image (US), FRAMES frames: the first COLOUR, the others its complement."""
    ds = make.ct_instance(study_uid=study_uid, size=32, modality="US", patient_name="Colour^Kim")
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame Image Storage
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.SeriesNumber = series_number
    ds.SamplesPerPixel = 3
    ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    for keyword in ("RescaleIntercept", "RescaleSlope"):
        del ds[keyword]
    pixels = np.zeros((frames, 32, 32, 3), dtype=np.uint8)
    pixels[0] = colour
    pixels[1:] = 255 - np.array(colour, dtype=np.uint8)
    ds.NumberOfFrames = frames
    ds.FrameTime = 100
    ds.PixelData = pixels.tobytes()
    return ds


def _close(actual: list[int], expected: tuple[int, int, int]) -> bool:
    return max(abs(a - b) for a, b in zip(actual, expected, strict=True)) <= 12


def test_colour_multiframe_and_compressed_colour(live_server) -> None:  # type: ignore[no-untyped-def]
    sync_roles()
    make_personas()
    study_uid = make.uid()
    cine = colour_instance(study_uid, 1, "RGB", (20, 200, 40), frames=3)
    ybr = colour_instance(study_uid, 2, "YBR_FULL", (76, 85, 255), frames=1)  # pure red
    ybr.compress("1.2.840.10008.1.2.5")  # RLE Lossless: the server decompresses to RGB
    _store([cine, ybr])
    with browser_page() as page:
        page.goto(f"{live_server.url}/login/")
        page.fill("#id_username", "rad")
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{live_server.url}/**")
        page.goto(f"{live_server.url}/viewer/{study_uid}/")
        page.wait_for_selector(".viewer-viewport[data-rendered=true]")
        page.wait_for_function(f"({CENTRE_PIXEL})(0)[1] > 150")
        assert _close(page.evaluate(CENTRE_PIXEL, 0), (20, 200, 40))
        assert "Frame 1/3" in page.text_content(".viewer-overlay .bl")
        page.click("#cine")
        page.wait_for_function(
            "document.querySelector('.viewer-overlay .bl').textContent.includes('Frame 2/3')"
        )
        page.click("#cine")
        screenshot(page, "viewer-colour-cine")
        page.click("[data-series]:nth-child(1) >> nth=1")
        page.wait_for_function(
            "document.querySelector('.viewer-overlay .tr').textContent.includes('Se 2')"
        )
        page.wait_for_function(f"({CENTRE_PIXEL})(0)[0] > 200")
        assert _close(page.evaluate(CENTRE_PIXEL, 0), (254, 0, 0))
        screenshot(page, "viewer-colour-ybr")
        # The decoding worker's WebAssembly codecs are served from static/ and compile.
        for codec in CODECS:
            assert page.evaluate(COMPILES, f"/static/viewer/codecs/{codec}"), codec
