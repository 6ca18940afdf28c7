import pytest

from mutualfc import bitstream
from mutualfc.codecs import create_codec
from mutualfc.errors import BitstreamError


def _sample():
    h = bitstream.Header(codec_id=5, task_id=1, param=32.0, model_tag=0xDEADBEEF, width=640, height=427)
    return h, bitstream.pack(h, [b"abc" * 100, b"", b"z"])


def test_pack_unpack_round_trip():
    h, data = _sample()
    h2, streams = bitstream.unpack(data)
    assert h2 == h and streams == [b"abc" * 100, b"", b"z"]
    assert len(data) == 301 + bitstream.overhead_bytes(3, [300, 0, 1])


@pytest.mark.parametrize("cut", [1, 5, 20, 100, 300])
def test_truncation_is_detected(cut):
    _, data = _sample()
    with pytest.raises(BitstreamError):
        bitstream.unpack(data[:-cut])


def test_every_single_bit_flip_is_detected():
    _, data = _sample()
    for i in range(0, len(data), 7):
        bad = bytearray(data)
        bad[i] ^= 0x10
        with pytest.raises(BitstreamError):
            bitstream.unpack(bytes(bad))


def test_foreign_files_are_refused():
    for junk in (b"", b"\x89PNG\r\n\x1a\n" + b"0" * 100, b"MFC"):
        with pytest.raises(BitstreamError):
            bitstream.unpack(junk)


def test_decoder_refuses_another_codecs_stream(example_images):
    data = create_codec("jpeg").encode(example_images[0], 50)
    with pytest.raises(BitstreamError, match="not by webp"):
        create_codec("webp").decode(data)
