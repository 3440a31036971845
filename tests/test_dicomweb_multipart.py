"""multipart/related reading and writing for DICOMweb, without Django."""

from __future__ import annotations

from io import BytesIO

import pytest

from pacs.dicomweb import multipart
from tests.dicomweb_util import parts


def _reader(body: bytes, size: int):  # type: ignore[no-untyped-def]
    stream = BytesIO(body)
    return lambda _wanted: stream.read(size)


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
def test_parts_are_read_whatever_the_chunk_size(chunk: int) -> None:
    body = (
        b"preamble to ignore\r\n"
        b"--xyz\r\nContent-Type: application/dicom\r\n\r\nfirst\r\n--xy not yet\r\n"
        b"--xyz\r\ncontent-type: application/octet-stream\r\nContent-ID: <2>\r\n\r\n\r\n"
        b"--xyz--\r\nepilogue"
    )
    read = list(multipart.read_parts(_reader(body, chunk), "xyz"))
    assert [(p.content_type.type, p.body) for p in read] == [
        ("application/dicom", b"first\r\n--xy not yet"),
        ("application/octet-stream", b""),
    ]
    assert read[1].headers["content-id"] == "<2>"


@pytest.mark.parametrize(
    "body",
    [b"no boundary here", b"--xyz\r\nContent-Type: a/b\r\n\r\nunfinished", b"--xyz\r\nbad\r\n\r\n"],
)
def test_broken_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(multipart.MultipartError):
        list(multipart.read_parts(_reader(body, 5), "xyz"))


def test_written_parts_read_back_with_the_standard_library() -> None:
    body = b"".join(
        multipart.stream_parts(
            [({"Content-Type": "application/dicom"}, [b"ab", b"cd"]), ({}, [b"\r\n--x"])], "bnd"
        )
    )
    read = parts('multipart/related; type="application/dicom"; boundary=bnd', body)
    assert [payload for _, payload in read] == [b"abcd", b"\r\n--x"]
    again = list(multipart.read_parts(_reader(body, 2), "bnd"))
    assert [p.body for p in again] == [b"abcd", b"\r\n--x"]


def test_media_types_and_accept() -> None:
    media = multipart.parse_media_type(
        'Multipart/Related; type="application/dicom"; boundary=abc; transfer-syntax=*'
    )
    assert media.type == "multipart/related"
    assert media.parameters == {
        "type": "application/dicom",
        "boundary": "abc",
        "transfer-syntax": "*",
    }
    ranges = multipart.split_accept('multipart/related; type="a/b, c", */*;q=0.1')
    assert [r.type for r in ranges] == ["multipart/related", "*/*"]
    assert ranges[0].parameters["type"] == "a/b, c"


def test_a_part_too_large_is_refused() -> None:
    body = b"--xyz\r\n\r\n" + b"x" * 100 + b"\r\n--xyz--"
    with pytest.raises(multipart.MultipartError, match="larger than 50"):
        list(multipart.read_parts(_reader(body, 10), "xyz", max_part_size=50))
    assert len(list(multipart.read_parts(_reader(body, 10), "xyz", max_part_size=200))) == 1
