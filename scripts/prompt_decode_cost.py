"""What the largest prompt the default limits accept costs to decode in the server process.

30 s of 192 kHz stereo (the most ``AudioLimits(max_seconds=30)`` lets through: 11.5 M decoded
samples), as a 16-bit FLAC of noise, decoded, downmixed and resampled by ``load_audio`` to the
encoder rates of VoxCPM2 (16 kHz) and VoxCPM1.5 (44.1 kHz): CPU time and peak traced memory.
Then issue 15's upload (30 s of 8-channel 655 kHz silence as FLAC, ~170 KB): the header check that
now refuses it, against the full decode the engine used to run between steps.

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/prompt_decode_cost.py
"""

from __future__ import annotations

import io
import time
import tracemalloc

import numpy as np
import soundfile as sf

from tests.audio_samples import silence
from voxcpm_engine.io.prompt_audio import AudioLimitError, AudioLimits, load_audio, read_header


def main() -> None:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    audio = (rng.standard_normal((30 * 192_000, 2)) * 0.1).astype(np.float32)
    sf.write(buf, audio, 192_000, format="FLAC", subtype="PCM_16")
    data = buf.getvalue()
    for target in (16_000, 44_100):
        tracemalloc.start()
        began = time.process_time()
        out = load_audio(data, target, limits=AudioLimits(max_seconds=30.0))
        cpu = time.process_time() - began
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(
            f"30 s of 192 kHz stereo FLAC ({len(data) / 1e6:.1f} MB) -> {target} Hz mono: "
            f"{cpu:.2f} s CPU, peak {peak / 1e6:.0f} MB, {out.size} samples"
        )
    bomb = silence(655_000, 8, 30.0)
    began, refused = time.perf_counter(), "accepted"
    try:
        read_header(bomb, AudioLimits(max_seconds=30.0))
    except AudioLimitError as exc:
        refused = f"refused ({exc})"
    checked_ms = (time.perf_counter() - began) * 1e3
    print(f"issue 15's FLAC ({len(bomb) / 1e3:.0f} KB): header check {checked_ms:.1f} ms, {refused}")
    tracemalloc.start()
    began = time.process_time()
    load_audio(bomb, 16_000)  # no limits: what the engine process used to do
    cpu = time.process_time() - began
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"the same file decoded without limits: {cpu:.2f} s CPU, peak {peak / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
