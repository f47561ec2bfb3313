"""Tests of tts_server.audio.mp3_info_tag: the LAME Info tag (frame count, delay, padding, checksums) on real mp3s."""

from __future__ import annotations

import io
import struct

import av
import pytest

from tests.tts_server.audio.test_encoders import LAME_DELAY, av_decode, mp3_frame, noise, sf_decode
from tts_server.audio.encoders import encode_all, make_encoder
from tts_server.audio.mp3_info_tag import lame_info_frame

MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


def crc16_arc(data: bytes) -> int:
    """CRC-16/ARC bit by bit (reflected polynomial 0x8005, initial 0): the LAME tag's checksum."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


@pytest.mark.parametrize("rate", MP3_RATES)
def test_whole_mp3_lame_tag(rate: int) -> None:
    audio = noise(rate, seconds=0.4)
    data, _ = encode_all("mp3", rate, audio)
    with av.open(io.BytesIO(data)) as container:
        stream_ = container.streams.audio[0]
        assert stream_.metadata.get("encoder") == "LAME3.100"  # ffmpeg names it only when the tag's CRC is right
        audio_bytes = sum(packet.size for packet in container.demux(stream_))  # the frames after the tag
    frame = mp3_frame(rate)
    info = 4 + (17 if frame == 1152 else 9)  # the Xing header follows a mono frame's side information
    assert data[info : info + 4] == b"Info"
    flags, frames, total = struct.unpack_from(">III", data, info + 4)
    assert flags & 3 == 3 and total == len(data)
    lame = info + 120
    assert data[lame : lame + 4] == b"LAME"
    delays = int.from_bytes(data[lame + 21 : lame + 24], "big")
    delay, padding = delays >> 12, delays & 0xFFF
    assert delay == LAME_DELAY and frames * frame - delay - padding == len(audio)
    music_length, music_crc = struct.unpack_from(">IH", data, lame + 28)
    assert music_length == len(data) and music_crc == crc16_arc(data[len(data) - audio_bytes :])
    for decode in (av_decode, sf_decode):
        decoded, sr = decode(data)
        assert sr == rate and len(decoded) == len(audio), decode.__name__


def streamed_mp3(rate: int, samples: int) -> bytes:
    """LAME's frames for ``samples`` samples of noise, without a tag (as a stream sends them)."""
    encoder = make_encoder("mp3", rate)
    try:
        return encoder.encode(noise(rate, seconds=samples / rate)) + encoder.finish()
    finally:
        encoder.close()


def frame_bytes(header: int) -> int:
    """Bytes of a Layer III frame, computed independently of the module (ISO 11172-3 / 13818-3)."""
    mpeg1 = (header >> 19) & 3 == 3
    kbps = (
        (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
        if mpeg1
        else (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
    )[(header >> 12) & 15]
    rate = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}[(header >> 19) & 3][
        (header >> 10) & 3
    ]
    return (144 if mpeg1 else 72) * kbps * 1000 // rate + ((header >> 9) & 1)


def count_frames(data: bytes) -> int:
    pos = count = 0
    while pos < len(data):
        pos += frame_bytes(struct.unpack_from(">I", data, pos)[0])
        count += 1
    assert pos == len(data)
    return count


@pytest.mark.parametrize("rate, kbps", [(16000, 64), (24000, 64), (44100, 128), (48000, 128)])
def test_the_tag_of_a_stream_of_frames(rate, kbps):
    samples = int(rate * 0.3)
    body = streamed_mp3(rate, samples)
    tag = lame_info_frame(body, samples, kbps)
    header, first = struct.unpack_from(">I", tag)[0], struct.unpack_from(">I", body)[0]
    assert header >> 9 & 1 == 0 and header >> 16 & 1 == 1  # no padding slot, no CRC
    assert header & ~((1 << 9) | (1 << 16)) == first & ~((1 << 9) | (1 << 16))  # same version, rate, bit rate, mode
    assert len(tag) == frame_bytes(header)
    frame = mp3_frame(rate)
    info = 4 + (17 if frame == 1152 else 9)
    assert tag[info : info + 4] == b"Info"
    flags, frames, total = struct.unpack_from(">III", tag, info + 4)
    assert (flags, frames, total) == (0x0F, count_frames(body), len(tag) + len(body))
    lame = info + 120
    assert tag[lame : lame + 9] == b"LAME3.100" and tag[lame + 20] == kbps
    delays = int.from_bytes(tag[lame + 21 : lame + 24], "big")
    delay, padding = delays >> 12, delays & 0xFFF
    assert delay == LAME_DELAY and frames * frame - delay - padding == samples and 0 <= padding < 4096
    (tag_crc,) = struct.unpack_from(">H", tag, lame + 34)
    assert tag_crc == crc16_arc(tag[: lame + 34])
    # The tagged file decodes to exactly the samples given.
    decoded, sr = av_decode(tag + body)
    assert sr == rate and len(decoded) == samples


def test_a_claimed_length_the_frames_cannot_hold_is_refused():
    body = streamed_mp3(24000, 2400)
    lame_info_frame(body, 2400, 64)
    with pytest.raises(ValueError, match="leave -?[0-9]+ samples of padding"):
        lame_info_frame(body, 2400 + 5000, 64)  # more samples than the frames hold
    with pytest.raises(ValueError, match="samples of padding"):
        lame_info_frame(body, 2400 - 4096, 64)  # padding over the 12-bit field


def test_data_that_is_not_whole_layer_iii_frames_is_refused():
    body = streamed_mp3(24000, 2400)
    with pytest.raises(ValueError, match="frames end at byte"):
        lame_info_frame(body[:-1], 2400, 64)
    with pytest.raises(ValueError, match="not a Layer III frame header"):
        lame_info_frame(b"RIFF" + body, 2400, 64)
    with pytest.raises(ValueError, match="not a Layer III frame header"):
        second = frame_bytes(struct.unpack_from(">I", body)[0])
        lame_info_frame(body[:second] + bytes(4) + body[second + 4 :], 2400, 64)  # a zeroed second frame header
