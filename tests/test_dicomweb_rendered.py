"""WADO-RS rendered and thumbnail resources (PS3.18 10.4.1.1.3, 10.4.1.1.4)."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless

from core.models import AuditEvent
from pacs.dicomweb import rendered
from tests import dicom_factory as make
from tests.dicomweb_util import basic, store

pytestmark = pytest.mark.django_db

BROWSERS = {"technologist", "radiologist", "admin"}
NARROWED = {"referring_physician", "other_physician", "patient"}
SIZE = 16


def _gradient_ct(**fields: Any) -> Dataset:
    """A CT whose stored values run 0, 16, 32 ... along each row (HU = value - 1024)."""
    ds = make.ct_instance(size=SIZE, **fields)
    ds.BitsStored = 16
    ds.HighBit = 15
    row = np.arange(SIZE, dtype=np.uint16) * 16
    ds.PixelData = np.tile(row, (SIZE, 1)).tobytes()
    return ds


def _colour(photometric: str, pixel: tuple[int, int, int], frames: int = 1) -> Dataset:
    ds = make.ct_instance(size=SIZE, modality="US")
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.SamplesPerPixel = 3
    ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    for keyword in ("RescaleIntercept", "RescaleSlope"):
        del ds[keyword]
    image = np.zeros((frames, SIZE, SIZE, 3), dtype=np.uint8)
    image[...] = pixel
    if frames > 1:
        ds.NumberOfFrames = frames
        image[1:] = 255 - np.array(pixel, dtype=np.uint8)  # later frames: the complement
    ds.PixelData = image.tobytes()
    return ds


def _url(ds: Dataset, tail: str = "rendered") -> str:
    return (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/{tail}"
    )


def _image(response: Any, media_type: str = "image/png") -> np.ndarray:
    assert response.status_code == 200, response.content[:200]
    assert response["Content-Type"] == media_type
    return np.asarray(Image.open(BytesIO(response.content)))


def test_window_parameter_is_applied_to_hounsfield_units(personas, client) -> None:
    ds = _gradient_ct()
    store([ds])
    auth = basic(personas.radiologist)
    # HU run -1024 .. -784 in steps of 16; a window of -904 +/- 64 maps -968 to 0, -840 to 255.
    pixels = _image(client.get(_url(ds) + "?window=-904,128,linear-exact&accept=image/png", **auth))
    assert pixels.shape == (SIZE, SIZE)
    row = pixels[0]
    assert row[:4].tolist() == [0, 0, 0, 0]  # -1024 .. -976: below the window
    assert row[4] == 16  # -960: 8 HU into it, 8/128 of the way up
    assert row[8] == 143  # -896: the centre plus 8 HU
    assert row[12:].tolist() == [255, 255, 255, 255]  # -832 and above: above it
    assert (pixels == row).all()  # every row alike


def test_stored_window_is_used_when_none_is_asked_and_monochrome1_inverted(
    personas, client
) -> None:
    ds = _gradient_ct()
    ds.WindowCenter, ds.WindowWidth = -904, 129  # linear: -968 is 0, -840 is 255
    inverted = _gradient_ct(study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID)
    inverted.PhotometricInterpretation = "MONOCHROME1"
    store([ds, inverted])
    auth = basic(personas.radiologist)
    plain = _image(client.get(_url(ds), HTTP_ACCEPT="image/png", **auth))
    assert plain[0, 0] == 0 and plain[0, -1] == 255
    flipped = _image(client.get(_url(inverted), HTTP_ACCEPT="image/png", **auth))
    assert flipped[0, 0] == 255 and flipped[0, -1] == 0  # no stored window: its own range


def test_jpeg_by_default_and_406_for_other_media(personas, client) -> None:
    ds = _gradient_ct()
    store([ds])
    auth = basic(personas.radiologist)
    response = client.get(_url(ds), **auth)
    assert response["Content-Type"] == "image/jpeg"
    assert response.content[:2] == b"\xff\xd8"
    assert client.get(_url(ds), HTTP_ACCEPT="image/*", **auth)["Content-Type"] == "image/jpeg"
    assert client.get(_url(ds), HTTP_ACCEPT="text/html", **auth).status_code == 406
    assert client.get(_url(ds) + "?window=40", **auth).status_code == 400
    assert client.get(_url(ds) + "?window=40,80,cubic", **auth).status_code == 400
    assert client.get(_url(ds) + "?quality=0", **auth).status_code == 400


def test_compressed_pixels_are_decoded(personas, client) -> None:
    ds = _gradient_ct()
    ds.compress(RLELossless)
    store([ds])
    auth = basic(personas.radiologist)
    pixels = _image(client.get(_url(ds) + "?window=-904,128,linear-exact&accept=image/png", **auth))
    assert pixels[3, 0] == 0 and pixels[3, 15] == 255


@pytest.mark.parametrize(
    ("photometric", "stored", "shown"),
    [
        ("RGB", (200, 30, 40), (200, 30, 40)),
        ("YBR_FULL", (76, 85, 255), (254, 0, 0)),  # pure red in YCbCr (PS3.3 C.7.6.3.1.2)
    ],
)
def test_colour_is_shown_as_rgb(personas, client, photometric: str, stored, shown) -> None:
    ds = _colour(photometric, stored)
    store([ds])
    pixels = _image(client.get(_url(ds), HTTP_ACCEPT="image/png", **basic(personas.radiologist)))
    assert pixels.shape == (SIZE, SIZE, 3)
    assert np.abs(pixels[5, 5].astype(int) - np.array(shown)).max() <= 2


def test_palette_colour_goes_through_its_lookup_table(personas, client) -> None:
    ds = _colour("RGB", (0, 0, 0))
    ds.SamplesPerPixel = 1
    del ds.PlanarConfiguration
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.PixelData = np.full((SIZE, SIZE), 3, dtype=np.uint8).tobytes()
    for index, colour in enumerate(("Red", "Green", "Blue")):
        table = np.zeros(256, dtype=np.uint16)
        table[3] = (0xFFFF, 0x8000, 0)[index]  # entry 3: orange, in 16 bits
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", table.tobytes())
    store([ds])
    pixels = _image(client.get(_url(ds), HTTP_ACCEPT="image/png", **basic(personas.radiologist)))
    assert pixels[0, 0].tolist() == [255, 128, 0]


def test_frames_of_a_multiframe_instance(personas, client) -> None:
    ds = _colour("RGB", (10, 20, 30), frames=3)
    store([ds])
    auth = basic(personas.radiologist)
    first = _image(client.get(_url(ds, "frames/1/rendered"), HTTP_ACCEPT="image/png", **auth))
    second = _image(client.get(_url(ds, "frames/2/rendered"), HTTP_ACCEPT="image/png", **auth))
    assert first[0, 0].tolist() == [10, 20, 30]
    assert second[0, 0].tolist() == [245, 235, 225]
    assert client.get(_url(ds, "frames/4/rendered"), **auth).status_code == 400
    assert client.get(_url(ds, "frames/1,2/rendered"), **auth).status_code == 400


def test_thumbnails_of_study_series_and_instance(personas, client) -> None:
    datasets = make.series(5, size=256)
    study = store(datasets)
    auth = basic(personas.radiologist)
    base = f"/dicomweb/studies/{study.study_instance_uid}"
    series = f"{base}/series/{datasets[0].SeriesInstanceUID}"
    for url in (f"{base}/thumbnail", f"{series}/thumbnail", _url(datasets[0], "thumbnail")):
        image = _image(client.get(url, **auth), "image/jpeg")
        assert image.shape == (rendered.THUMBNAIL_SIZE, rendered.THUMBNAIL_SIZE), url
    small = _image(client.get(f"{series}/thumbnail?viewport=64,32", **auth), "image/jpeg")
    assert small.shape == (32, 32)
    audit = AuditEvent.objects.filter(actor_name="rad", action="export")
    assert (
        audit.filter(object_id=str(study.pk), detail__startswith="WADO-RS thumbnail").count() == 4
    )
    # The middle image of the series stands for it.
    assert client.get(f"{base}/series/1.2.3/thumbnail", **auth).status_code == 404


def test_every_persona(personas, client) -> None:
    ds = _gradient_ct()
    study = store([ds])
    for name, user in personas.all().items():
        status = client.get(_url(ds), **basic(user)).status_code
        expected = 200 if name in BROWSERS else 404 if name in NARROWED else 403
        assert status == expected, name
    assert client.get(_url(ds)).status_code == 401
    events = AuditEvent.objects.filter(object_id=str(study.pk))
    assert events.filter(actor_name="rad", action="export", detail__startswith="WADO-RS rendered")
    assert events.filter(actor_name="drref", action="denied", outcome="failure").exists()


def test_voi_functions() -> None:
    values = np.array([-101.0, 0.0, 100.0])
    linear = rendered.voi(values, rendered.Window(0, 201))
    assert linear.tolist() == pytest.approx([0.0, 128.1, 255.0], abs=0.5)
    sigmoid = rendered.voi(values, rendered.Window(0, 200, rendered.SIGMOID))
    assert sigmoid[1] == pytest.approx(127.5)
    assert sigmoid[0] == pytest.approx(255 / (1 + np.exp(4 * 101 / 200)))  # PS3.3 C.11.2.1.3.1
    assert sigmoid[2] == pytest.approx(255 / (1 + np.exp(-2)))
    assert rendered.parse_window("40,80,sigmoid") == rendered.Window(40, 80, rendered.SIGMOID)
    with pytest.raises(rendered.RenderError):
        rendered.parse_window("40,0")


def test_a_series_and_a_study_rendered_as_one_image_per_instance(personas, client) -> None:
    from tests.dicomweb_util import parts

    first = _gradient_ct()
    second = _gradient_ct(study_uid=first.StudyInstanceUID, series_uid=first.SeriesInstanceUID)
    second.InstanceNumber = 2
    store([first, second])
    auth = basic(personas.radiologist)
    series_url = f"/dicomweb/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"
    response = client.get(f"{series_url}/rendered?accept=image/png", **auth)
    assert response.status_code == 200
    body = b"".join(response.streaming_content)
    received = parts(response["Content-Type"], body)
    assert [content_type for content_type, _ in received] == ["image/png", "image/png"]
    single = _image(client.get(_url(first) + "?accept=image/png", **auth))
    assert np.array_equal(np.asarray(Image.open(BytesIO(received[0][1]))), single)
    study = client.get(f"/dicomweb/studies/{first.StudyInstanceUID}/rendered", **auth)
    assert study.status_code == 200 and study["Content-Type"].startswith("multipart/related")
    assert AuditEvent.objects.filter(detail__startswith="WADO-RS rendered: 2").exists()
    outsider = client.get(f"{series_url}/rendered", **basic(personas.outsider))
    assert outsider.status_code in (403, 404)


def test_annotation_writes_patient_and_technique_into_the_image(personas, client) -> None:
    ds = make.ct_instance(size=128)
    ds.PixelData = np.zeros((128, 128), dtype=np.uint16).tobytes()  # black: the text shows
    store([ds])
    auth = basic(personas.radiologist)
    url = _url(ds) + "?accept=image/png&window=5000,100"
    plain = _image(client.get(url, **auth))
    assert plain.max() == 0
    marked = _image(client.get(url + "&annotation=patient,technique", **auth))
    assert marked[:30].max() > 200 and marked[40:].max() == 0  # white text at the top only
    assert client.get(url + "&annotation=everything", **auth).status_code == 400
    lines = rendered.annotation_lines(
        ds, rendered.Rendering(window=rendered.Window(40, 400), annotation=("patient", "technique"))
    )
    assert lines[0] == "Testperson Alex TP0001 19700101"
    assert lines[1].startswith("CT") and lines[1].endswith("W 400 L 40")
