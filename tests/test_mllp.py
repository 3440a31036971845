"""The MLLP frame decoder, fed the way TCP delivers: in pieces, in bunches, with noise."""

from __future__ import annotations

import pytest

from ris.hl7.mllp import (
    CARRIAGE_RETURN,
    END_BLOCK,
    START_BLOCK,
    FrameDecoder,
    FrameTooLarge,
    encode_frame,
)

MESSAGE = b"MSH|^~\\&|HIS|HOSP|RISPACS|RADIOLOGY|20250101120000||ADT^A01|MSG1|P|2.5.1\rPID|||1\r"
OTHER = b"MSH|^~\\&|HIS|HOSP|RISPACS|RADIOLOGY|20250101120001||ADT^A08|MSG2|P|2.5.1\r"


def test_encode_frame_wraps_content_in_start_and_end_blocks() -> None:
    assert encode_frame(b"abc") == b"\x0babc\x1c\x0d"


def test_one_frame_in_one_read() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(MESSAGE)) == [MESSAGE]
    assert decoder.buffered == 0
    assert decoder.discarded_bytes == 0


@pytest.mark.parametrize("cut", range(1, len(MESSAGE) + 3))
def test_frame_split_in_two_reads_at_every_position(cut: int) -> None:
    frame = encode_frame(MESSAGE)
    decoder = FrameDecoder()
    assert decoder.feed(frame[:cut]) == []
    assert decoder.feed(frame[cut:]) == [MESSAGE]


def test_frame_fed_one_byte_at_a_time() -> None:
    decoder = FrameDecoder()
    frames: list[bytes] = []
    for byte in encode_frame(MESSAGE):
        frames += decoder.feed(bytes([byte]))
    assert frames == [MESSAGE]


def test_several_frames_in_one_read_come_out_in_order() -> None:
    decoder = FrameDecoder()
    data = encode_frame(MESSAGE) + encode_frame(OTHER) + encode_frame(MESSAGE)
    assert decoder.feed(data) == [MESSAGE, OTHER, MESSAGE]


def test_second_frame_completed_by_a_later_read() -> None:
    decoder = FrameDecoder()
    second = encode_frame(OTHER)
    assert decoder.feed(encode_frame(MESSAGE) + second[:10]) == [MESSAGE]
    assert decoder.feed(second[10:]) == [OTHER]


def test_garbage_before_a_start_block_is_discarded(caplog: pytest.LogCaptureFixture) -> None:
    decoder = FrameDecoder(peer="10.0.0.9:4000")
    assert decoder.feed(b"GET / HTTP/1.0\r\n\r\n" + encode_frame(MESSAGE)) == [MESSAGE]
    assert decoder.discarded_bytes == 18
    assert "10.0.0.9:4000: discarded 18 byte(s)" in caplog.text


def test_garbage_without_any_frame_is_not_kept() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"x" * 1000) == []
    assert decoder.buffered == 0
    assert decoder.feed(encode_frame(MESSAGE)) == [MESSAGE]


def test_garbage_between_frames_is_discarded() -> None:
    decoder = FrameDecoder()
    data = encode_frame(MESSAGE) + b"\n" + encode_frame(OTHER)
    assert decoder.feed(data) == [MESSAGE, OTHER]
    assert decoder.discarded_bytes == 1


def test_new_start_block_inside_a_frame_abandons_the_unfinished_one() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(START_BLOCK + b"MSH|half a mess") == []
    assert decoder.feed(encode_frame(OTHER)) == [OTHER]
    assert decoder.discarded_bytes == len(START_BLOCK + b"MSH|half a mess")


def test_end_block_without_carriage_return_is_no_frame() -> None:
    decoder = FrameDecoder()
    broken = START_BLOCK + MESSAGE + END_BLOCK + b"X"
    assert decoder.feed(broken + encode_frame(OTHER)) == [OTHER]
    assert decoder.discarded_bytes == len(broken)


def test_end_block_alone_at_the_end_of_a_read_waits_for_the_carriage_return() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(START_BLOCK + MESSAGE + END_BLOCK) == []
    assert decoder.feed(CARRIAGE_RETURN) == [MESSAGE]


def test_empty_frame_is_a_frame() -> None:
    assert FrameDecoder().feed(encode_frame(b"")) == [b""]


def test_frame_at_the_size_limit_is_accepted() -> None:
    decoder = FrameDecoder(max_frame_size=len(MESSAGE))
    assert decoder.feed(encode_frame(MESSAGE)) == [MESSAGE]


def test_frame_over_the_size_limit_in_one_read_raises() -> None:
    decoder = FrameDecoder(max_frame_size=len(MESSAGE) - 1)
    with pytest.raises(FrameTooLarge) as caught:
        decoder.feed(encode_frame(OTHER) + encode_frame(MESSAGE))
    assert caught.value.frames == [OTHER]  # the frame before it still gets answered
    assert decoder.buffered == 0


def test_unfinished_frame_growing_past_the_limit_raises_before_it_ends() -> None:
    decoder = FrameDecoder(max_frame_size=100)
    assert decoder.feed(START_BLOCK + b"x" * 60) == []
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"x" * 60)
    assert decoder.buffered == 0


def test_decoders_are_independent() -> None:
    first, second = FrameDecoder(), FrameDecoder()
    frame = encode_frame(MESSAGE)
    assert first.feed(frame[:5]) == []
    assert second.feed(encode_frame(OTHER)) == [OTHER]
    assert first.feed(frame[5:]) == [MESSAGE]
