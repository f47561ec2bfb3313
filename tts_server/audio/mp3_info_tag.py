"""The LAME Info tag of a whole mp3 file: frame count, encoder delay and padding, so decoders trim both.

A Layer III frame holds 1152 samples (MPEG-1: 32 kHz and up) or 576 (MPEG-2/2.5). LAME starts every file
with :data:`LAME_DELAY` samples of priming and pads the end to whole frames; decoders add 529 samples of
their own delay. The "Info" frame (Xing header + LAME extension, the layout LAME itself writes for CBR) in
front of the audio frames tells decoders (ffmpeg, and mpg123 under libsndfile) the frame count, the delay
and the padding, and they trim both. To a decoder that ignores it, it is one silent frame. Used by the mp3
encoder of :mod:`tts_server.audio.encoders` for non-streamed files (a stream cannot know its frame count).
"""

from __future__ import annotations

import struct

__all__ = ["LAME_DELAY", "lame_info_frame"]

LAME_DELAY = 576  # LAME's ENCDELAY: the same at every rate, bit rate and quality used here (tests measure it)
_MPEG_KBPS = {  # Layer III bit rates by header index: MPEG-1, then MPEG-2 and 2.5
    False: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    True: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MPEG_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}  # by version bits
_XING_FLAGS = 0x0F  # frames, bytes, TOC and quality present: LAME's fixed layout, which some readers assume
_XING_QUALITY = 55  # what LAME writes for CBR at quality 5: 100 - 10 * VBR_q (default 4) - quality
_LAME_VERSION = b"LAME3.100"  # the LAME lameenc bundles; readers trust the delay fields only after "LAME"


def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC16_TABLE = _crc16_table()


def _crc16(data: bytes) -> int:
    """CRC-16/ARC (reflected 0x8005, initial 0): the checksum of the LAME tag and of the music it covers."""
    crc, table = 0, _CRC16_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def _mpeg_frame(header: int) -> tuple[bool, int, int]:
    """``(lsf, sample_rate, frame_bytes)`` of a Layer III frame header; lsf: MPEG-2/2.5 (576 samples a frame).

    Raises:
        ValueError: Not a Layer III frame header with a valid bit rate and sample rate.
    """
    version, layer = (header >> 19) & 3, (header >> 17) & 3
    kbps_index, rate_index = (header >> 12) & 15, (header >> 10) & 3
    if header >> 21 != 0x7FF or version == 1 or layer != 1 or kbps_index in (0, 15) or rate_index == 3:
        raise ValueError(f"mp3: not a Layer III frame header: {header:08x}")
    lsf = version != 3
    rate = _MPEG_RATES[version][rate_index]
    return lsf, rate, (72 if lsf else 144) * _MPEG_KBPS[lsf][kbps_index] * 1000 // rate + ((header >> 9) & 1)


def _count_frames(data: bytes) -> int:
    """The number of frames in a run of Layer III frames (LAME's output: nothing between them).

    Raises:
        ValueError: The frames do not tile ``data`` exactly.
    """
    pos = count = 0
    while pos + 4 <= len(data):
        pos += _mpeg_frame(struct.unpack_from(">I", data, pos)[0])[2]
        count += 1
    if pos != len(data):
        raise ValueError(f"mp3: frames end at byte {pos}, the data at {len(data)}")
    return count


def lame_info_frame(body: bytes, samples: int, kbps: int) -> bytes:
    """The LAME Info frame for ``body`` (LAME's frames of ``samples`` samples of audio), to put in front of it."""
    first = struct.unpack_from(">I", body)[0]
    # Same version, rate, bit rate and mode as the audio; no padding slot and no CRC, so the layout is fixed.
    header = (first & ~(1 << 9)) | (1 << 16)
    lsf, rate, size = _mpeg_frame(header)
    side_info = 9 if lsf else 17  # the (zero) side information of a mono frame
    if size < 4 + side_info + 156:  # header, side information, Xing header (120) and LAME extension (36)
        raise ValueError(f"mp3: a {size}-byte frame cannot hold the Info tag")
    frames = _count_frames(body)
    padding = frames * (576 if lsf else 1152) - LAME_DELAY - samples
    if not 0 <= padding < 4096:  # the field's 12 bits; LAME pads 576 + 47 samples to 576 + 47 + a frame
        raise ValueError(f"mp3: {frames} frames for {samples} samples leave {padding} samples of padding")
    total = size + len(body)
    frame = bytearray(size)
    struct.pack_into(">I", frame, 0, header)
    pos = 4 + side_info
    toc = bytes(min(255, i * 256 // 100) for i in range(100))  # CBR: byte offsets grow linearly with time
    struct.pack_into(">4sIII100sI", frame, pos, b"Info", _XING_FLAGS, frames, total, toc, _XING_QUALITY)
    pos += 120
    source = 0 if rate <= 32000 else 1 if rate == 44100 else 2  # LAME's "source frequency" bits
    lame = struct.pack(
        ">9sBBIHHBB3sBBHIH",
        _LAME_VERSION,
        0x01,  # tag revision 0, CBR
        0,  # lowpass: not recorded
        0,  # peak amplitude: not recorded
        0,  # radio replay gain: not set
        0,  # audiophile replay gain: not set
        0,  # encoding flags and ATH type
        min(kbps, 255),  # CBR: the bit rate
        ((LAME_DELAY << 12) | padding).to_bytes(3, "big"),
        source << 6,  # misc: no noise shaping, mono, source frequency
        0,  # mp3 gain
        0,  # preset and surround
        total,  # music length: this frame and the audio
        _crc16(body),  # music CRC
    )
    frame[pos : pos + len(lame)] = lame
    pos += len(lame)
    struct.pack_into(">H", frame, pos, _crc16(bytes(frame[:pos])))  # tag CRC: everything before it
    return bytes(frame)
