"""Every output format, streamed and whole, on both endpoints, read back by three decoders.

For each response format (pcm, wav, mp3, flac, opus, aac): ``POST /generate`` streamed and with
``stream: false``, and ``POST /v1/audio/speech`` (always streamed) with ``stream_format`` ``audio`` and
``sse``. Each body is decoded by libsndfile (soundfile; pcm as headerless RAW; not aac, which libsndfile
cannot read), by ffmpeg (PyAV), and by this server's own ``POST /encode_latents``, which answers 200 for
every format libsndfile reads (wav, flac, mp3, opus) and 400 naming ``audio`` for the rest (pcm has no
header to detect; aac is ADTS).

The audio's true length is known: the synthetic model never stops early, so ``max_generate_length``
patches of ``samples_per_patch`` samples (``GET /info``). Decoded lengths must match it as
:mod:`tts_server.audio.encoders` documents: exactly for pcm, wav, flac, opus and a whole mp3 (LAME tag);
a streamed mp3 and aac (ADTS, streamed or not) carry the delay and padding their container cannot
signal. Each decoding is also compared with the pcm of the same seed, so it is the right audio and not
only the right length: the lossless formats sample for sample, the lossy ones at the lag of their delay.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import av
import numpy as np
import orjson
import pytest
import soundfile as sf
import soxr

from tests.audio_samples import best_lag
from tests.server_process import Server

TEXT = "Every format, read back."
STEPS = 3  # patches: a fraction of a second of audio, a few engine steps per request
SEED = 11
FORMATS = ("pcm", "wav", "mp3", "flac", "opus", "aac")
LIBSNDFILE_READS = ("pcm", "wav", "mp3", "flac", "opus")  # pcm only when told it is RAW s16le mono
ENCODE_LATENTS_READS = ("wav", "mp3", "flac", "opus")  # what libsndfile detects by itself
MP3_DELAY = 576 + 529  # LAME's priming and the decoder's delay: a stream cannot signal them (no LAME tag)
AAC_PRIMING = 1024  # ADTS cannot signal it, streamed or not

# (endpoint, mode): /generate streamed or whole; /v1/audio/speech as audio or as server-sent events.
MODES = (("generate", "stream"), ("generate", "whole"), ("speech", "audio"), ("speech", "sse"))
CASES = [(endpoint, mode, fmt) for endpoint, mode in MODES for fmt in FORMATS]


def mp3_frame(rate: int) -> int:
    """Samples in a Layer III frame: 1152 for MPEG-1 (32 kHz and up), 576 for MPEG-2/2.5."""
    return 1152 if rate >= 32000 else 576


def expected_extra(fmt: str, whole: bool, rate: int) -> tuple[int, int]:
    """The fewest and most samples a decoder may give beyond the audio, at ``rate``, per the formats' docs."""
    if fmt == "mp3" and not whole:
        # LAME pads to whole frames after the audio: 47 samples to a frame more.
        return MP3_DELAY + 47 - 1, MP3_DELAY + 47 + mp3_frame(rate)
    if fmt == "aac":
        return AAC_PRIMING - 1, 2 * AAC_PRIMING  # then the padding of the last 1024-sample frame
    return 0, 0


def expected_lag(fmt: str, whole: bool) -> int:
    """Where a decoding lines up with the audio: the delay its container leaves in."""
    if fmt == "mp3" and not whole:
        return MP3_DELAY
    return AAC_PRIMING if fmt == "aac" else 0


@pytest.fixture(scope="module")
def reference(server: Server) -> dict[str, Any]:
    """The model's sample rate and the pcm of (TEXT, SEED), checked to be STEPS patches long, as int16."""
    with server.client() as client:
        info = client.get("/info").json()
        body = {"target_text": TEXT, "max_generate_length": STEPS, "seed": SEED, "response_format": "pcm"}
        # The first request fills the prefix cache; repeats reuse it and agree with each other exactly
        # (the first may round differently on some CPUs), so the reference is a repeat.
        for _ in range(2):
            response = client.post("/generate", json=body)
            assert response.status_code == 200, response.text
    rate, per_patch = int(info["sample_rate"]), int(info["samples_per_patch"])
    pcm = np.frombuffer(response.content, dtype="<i2")
    assert len(pcm) == STEPS * per_patch and np.abs(pcm).max() > 0
    return {"rate": rate, "pcm": pcm}


def fetch(server: Server, endpoint: str, mode: str, fmt: str) -> tuple[bytes, int]:
    """The response body (for SSE: its audio deltas joined) and ``X-Sample-Rate``, after checking the framing."""
    with server.client() as client:
        if endpoint == "generate":
            body = {"target_text": TEXT, "max_generate_length": STEPS, "seed": SEED, "response_format": fmt}
            response = client.post("/generate", json={**body, "stream": mode == "stream"})
        else:
            body = {"input": TEXT, "max_generate_length": STEPS, "seed": SEED, "response_format": fmt}
            response = client.post("/v1/audio/speech", json={**body, "stream_format": mode})
    assert response.status_code == 200, response.text
    if mode == "whole":
        assert int(response.headers["content-length"]) == len(response.content)
    else:
        assert response.headers.get("transfer-encoding") == "chunked"
    if mode != "sse":
        assert response.headers["content-type"].startswith("audio/")
        return response.content, int(response.headers["x-sample-rate"])
    events = [orjson.loads(line[6:]) for line in response.text.split("\n\n") if line.startswith("data: ")]
    assert [e["type"] for e in events[-1:]] == ["speech.audio.done"], events[-1:]
    audio = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    return audio, int(response.headers["x-sample-rate"])


def read_soundfile(data: bytes, fmt: str, rate: int) -> tuple[np.ndarray, int]:
    """libsndfile's decoding (float64 in [-1, 1]) and rate; pcm is read as headerless s16le mono."""
    raw = {"format": "RAW", "subtype": "PCM_16", "endian": "LITTLE", "samplerate": rate, "channels": 1}
    samples, decoded_rate = sf.read(io.BytesIO(data), dtype="float64", **(raw if fmt == "pcm" else {}))
    return samples, decoded_rate


def read_pyav(data: bytes, fmt: str, rate: int) -> tuple[np.ndarray, int]:
    """ffmpeg's decoding (float64 in [-1, 1]) and rate; pcm through its s16le demuxer."""
    raw = {"format": "s16le", "options": {"sample_rate": str(rate), "ch_layout": "mono"}}
    with av.open(io.BytesIO(data), **(raw if fmt == "pcm" else {})) as container:
        stream = container.streams.audio[0]
        frames = [frame.to_ndarray() for frame in container.decode(stream)]
        decoded_rate = stream.codec_context.sample_rate
    samples = np.concatenate(frames, axis=1)[0]
    scale = 32768.0 if samples.dtype == np.int16 else 1.0
    return samples.astype(np.float64) / scale, decoded_rate


def check_decoding(decoded: np.ndarray, decoded_rate: int, fmt: str, whole: bool, ref: dict[str, Any]) -> None:
    """Length within the documented bounds, and the reference audio at the documented lag."""
    pcm, rate = ref["pcm"], ref["rate"]
    audio = pcm.astype(np.float64) / 32768
    if decoded_rate != rate:  # opus decoders may play at 48 kHz; codecs resample rates they do not take
        audio = soxr.resample(audio, rate, decoded_rate, quality="HQ")
    low, high = expected_extra(fmt, whole, decoded_rate)
    slack = 0 if decoded_rate == rate else 2  # resampled lengths round
    extra = len(decoded) - len(audio)
    assert low - slack <= extra <= high + slack, (extra, (low, high))
    if fmt in ("pcm", "wav", "flac"):
        np.testing.assert_array_equal(np.round(decoded * 32768).astype(np.int16), pcm)
        return
    lag, correlation = best_lag(decoded, audio, max_lag=expected_lag(fmt, whole) + 2 * AAC_PRIMING)
    # Chance correlation of this noise-like audio is ~0.01; opus at 48 kbps keeps ~0.55 of it, mp3 and aac more.
    assert lag == expected_lag(fmt, whole) and correlation > 0.3, (lag, correlation)


@pytest.mark.parametrize(("endpoint", "mode", "fmt"), CASES, ids=["-".join(case) for case in CASES])
def test_format_reads_back_in_every_decoder(
    server: Server, reference: dict[str, Any], endpoint: str, mode: str, fmt: str
) -> None:
    data, rate = fetch(server, endpoint, mode, fmt)
    whole = mode == "whole"
    decoders = [read_pyav] + ([read_soundfile] if fmt in LIBSNDFILE_READS else [])
    durations = {}
    for decode in decoders:
        decoded, decoded_rate = decode(data, fmt, rate)
        try:
            check_decoding(decoded, decoded_rate, fmt, whole, reference)
        except AssertionError as error:
            raise AssertionError(f"{decode.__name__}: {error}") from error
        durations[decode.__name__] = len(decoded) / decoded_rate

    with server.client() as client:
        response = client.post("/encode_latents", json={"audio": base64.b64encode(data).decode()})
    if fmt not in ENCODE_LATENTS_READS:
        assert response.status_code == 400 and response.json()["error"]["field"] == "audio", response.text
        return
    assert response.status_code == 200, response.text
    latents = response.json()
    assert latents["shape"][0] >= 1
    # The server reads the same length libsndfile does (its seconds are rounded to ms).
    assert abs(latents["seconds"] - durations["read_soundfile"]) <= 0.0005 + 1e-9, (latents["seconds"], durations)
