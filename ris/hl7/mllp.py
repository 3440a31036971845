"""MLLP framing of HL7 v2 messages (HL7 v2 Transport Specification: MLLP, Release 2).

A frame is <VT> content <FS><CR>. The decoder is fed whatever each TCP read returned
and hands back the complete frames in order: a frame may arrive in pieces, several may
arrive in one read, and bytes outside a frame are discarded.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

START_BLOCK = b"\x0b"  # <VT>
END_BLOCK = b"\x1c"  # <FS>
CARRIAGE_RETURN = b"\x0d"  # <CR>, the last byte of every frame
MAX_FRAME_SIZE = 16 * 1024 * 1024


class FrameTooLarge(Exception):
    """A frame grew past the size limit; the connection should be dropped."""

    def __init__(self, limit: int, frames: list[bytes]) -> None:
        super().__init__(f"MLLP frame larger than {limit} bytes")
        self.limit = limit
        # The complete frames that came before the oversized one in the same read.
        self.frames = frames


def encode_frame(content: bytes) -> bytes:
    """Wrap CONTENT in an MLLP frame."""
    return START_BLOCK + content + END_BLOCK + CARRIAGE_RETURN


class FrameDecoder:
    """Turn a stream of bytes into MLLP frame contents, one connection at a time."""

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE, *, peer: str = "") -> None:
        self.max_frame_size = max_frame_size
        self.peer = peer
        self.discarded_bytes = 0
        self._buffer = bytearray()
        self._in_frame = False
        # How far into the buffered content we already looked for <FS> and <VT>.
        self._scanned = 0

    @property
    def buffered(self) -> int:
        """Return the number of bytes held for an incomplete frame."""
        return len(self._buffer)

    def _discard(self, count: int, reason: str) -> None:
        if count:
            self.discarded_bytes += count
            logger.warning("MLLP %s: discarded %d byte(s) %s", self.peer or "-", count, reason)

    def feed(self, data: bytes) -> list[bytes]:
        """Take the bytes of one read and return the contents of the frames they complete."""
        frames: list[bytes] = []
        buffer = self._buffer
        buffer += data
        while buffer:
            if not self._in_frame:
                start = buffer.find(START_BLOCK)
                if start < 0:
                    self._discard(len(buffer), "outside a frame")
                    buffer.clear()
                    break
                self._discard(start, "before a start block")
                del buffer[: start + 1]
                self._in_frame = True
                self._scanned = 0
            end = buffer.find(END_BLOCK, self._scanned)
            restart = buffer.find(START_BLOCK, self._scanned, end if end >= 0 else len(buffer))
            if restart >= 0:
                # The content never holds <VT>: the sender gave up on the frame and began anew.
                # Counted with the frame's own start block, as garbage would be.
                self._discard(1 + restart, "of an unfinished frame")
                del buffer[: restart + 1]
                self._scanned = 0
                continue
            if end < 0 or end + 1 == len(buffer):
                # Incomplete, or <FS> came without the <CR> that must follow it: wait for more.
                self._scanned = len(buffer) if end < 0 else end
                if (len(buffer) if end < 0 else end) > self.max_frame_size:
                    self._reset()
                    raise FrameTooLarge(self.max_frame_size, frames)
                break
            if buffer[end + 1] != CARRIAGE_RETURN[0]:
                # <FS> not followed by <CR> is no frame end, and the content never holds <FS>.
                self._discard(1 + end + 1, "of a frame with a broken end block")
                del buffer[: end + 1]
                self._in_frame = False
                continue
            if end > self.max_frame_size:
                self._reset()
                raise FrameTooLarge(self.max_frame_size, frames)
            frames.append(bytes(buffer[:end]))
            del buffer[: end + 2]
            self._in_frame = False
        return frames

    def _reset(self) -> None:
        self._buffer.clear()
        self._in_frame = False
        self._scanned = 0
