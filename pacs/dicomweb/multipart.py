"""multipart/related (RFC 2387) as DICOMweb uses it: read parts as they arrive, write parts.

Plain module: no Django. Reading keeps at most one part and one chunk in memory; writing
yields the stored files chunk by chunk, so that a whole study is never held at once.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

CHUNK_SIZE = 256 * 1024
# A part is held in memory whole (the ingest service takes bytes): refuse larger ones.
MAX_PART_SIZE = 1 << 30
CRLF = b"\r\n"


class MultipartError(ValueError):
    """The body is not the multipart/related message it claims to be."""


@dataclass(frozen=True)
class MediaType:
    """A media type with its parameters (names lower-cased, quotes removed)."""

    type: str
    parameters: dict[str, str] = field(default_factory=dict)


_PARAMETER = re.compile(r';\s*([!#$%&\'*+.^`|~\w-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)')


def parse_media_type(text: str) -> MediaType:
    """Split a Content-Type (or one Accept range) into its type and parameters."""
    head, _, _rest = text.partition(";")
    parameters = {
        name.lower(): value[1:-1].replace('\\"', '"') if value.startswith('"') else value
        for name, value in _PARAMETER.findall(text[len(head) :])
    }
    return MediaType(head.strip().lower(), parameters)


def split_accept(header: str) -> list[MediaType]:
    """The media ranges of an Accept header, in the order given (commas inside quotes kept)."""
    ranges: list[str] = []
    current, quoted = "", False
    for char in header:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            ranges.append(current)
            current = ""
        else:
            current += char
    ranges.append(current)
    return [parse_media_type(text) for text in ranges if text.strip()]


@dataclass
class Part:
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> MediaType:
        return parse_media_type(self.headers.get("content-type", "text/plain"))


def _headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split(CRLF):
        if not line.strip():
            continue
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon:
            raise MultipartError(f"a part header line has no colon: {line[:40]!r}")
        headers[name.strip().lower()] = value.strip()
    return headers


def read_parts(
    read: Callable[[int], bytes], boundary: str, *, max_part_size: int = MAX_PART_SIZE
) -> Iterator[Part]:
    """Yield the parts of a multipart body read with READ(size), as each one is complete."""
    if not boundary or len(boundary) > 200:
        raise MultipartError("the Content-Type has no usable boundary parameter")
    delimiter = b"--" + boundary.encode("latin-1")
    buffer = bytearray()  # appended to in place: a large part is not copied chunk by chunk
    eof = False

    def fill() -> bool:
        nonlocal buffer, eof
        if eof:
            return False
        chunk = read(CHUNK_SIZE)
        if not chunk:
            eof = True
            return False
        buffer.extend(chunk)
        return True

    # The preamble before the first delimiter is ignored (RFC 2046 5.1.1).
    start = 0
    while (found := buffer.find(delimiter, start)) < 0:
        start = max(0, len(buffer) - len(delimiter))
        if not fill():
            raise MultipartError("the body holds no part (boundary not found)")
    del buffer[: found + len(delimiter)]
    closing = CRLF + delimiter
    while True:
        while len(buffer) < 2 and fill():
            pass
        if buffer.startswith(b"--"):
            return  # the close delimiter
        start = 0
        while (end_of_headers := buffer.find(CRLF + CRLF, start)) < 0:
            start = max(0, len(buffer) - 3)
            if not fill():
                raise MultipartError("a part's headers do not end")
        line_end = buffer.find(CRLF)
        headers = _headers(bytes(buffer[line_end + 2 : end_of_headers + 2]))
        del buffer[: end_of_headers + 4]
        start = 0
        while (end := buffer.find(closing, start)) < 0:
            start = max(0, len(buffer) - len(closing))
            if start > max_part_size:
                raise MultipartError(f"a part is larger than {max_part_size} bytes")
            if not fill():
                raise MultipartError("the body ends inside a part (no closing boundary)")
        body = bytes(buffer[:end])
        del buffer[: end + len(closing)]
        yield Part(headers, body)


def new_boundary() -> str:
    return f"rispacs-{uuid.uuid4().hex}"


def stream_parts(
    parts: Iterable[tuple[dict[str, str], Iterable[bytes]]], boundary: str
) -> Iterator[bytes]:
    """Yield a multipart body: each part's headers, then its body chunks as they come."""
    for headers, body in parts:
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        yield b"--" + boundary.encode("ascii") + CRLF + head.encode("latin-1") + CRLF
        yield from body
        yield CRLF
    yield b"--" + boundary.encode("ascii") + b"--" + CRLF


def file_chunks(open_file: Callable[[], BinaryIO], size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Yield a file's content in chunks, opening it only when the first chunk is wanted."""
    with open_file() as handle:
        while chunk := handle.read(size):
            yield chunk
