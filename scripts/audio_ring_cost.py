"""What one step message's audio costs to hand over: pickled in band against the shared-memory ring.

Times, in one process, pickling a 128-stream VoxCPM1.5-sized step message (128 chunks of 7056
float32 samples) and the ring's ``pack`` + pickle + ``unpack`` of the same message (the pipe's own
write/read round trips are not in either: that is what the ring saves). Run:
``PYTHONPATH=. python scripts/audio_ring_cost.py``.
"""

from __future__ import annotations

import pickle
import tempfile
import time
from collections.abc import Callable

import numpy as np

from voxcpm_engine.proc.audio_ring import AudioRing
from voxcpm_engine.proc.messages import Output, StepOutputs

STREAMS, SAMPLES = 128, 7056


def per_call_ms(fn: Callable[[], object], n: int = 50) -> float:
    """Mean milliseconds of ``fn`` over ``n`` calls."""
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e3


def main() -> None:
    """Print both costs."""
    with tempfile.TemporaryDirectory() as directory:
        writer = AudioRing.create(4, STREAMS * SAMPLES, directory=directory)
        reader = AudioRing.attach(writer.spec)
        audio = np.random.default_rng(0).random((STREAMS, SAMPLES), dtype=np.float32)
        message = StepOutputs(1, 0.0, [Output(f"r{i}", audio[i], 1) for i in range(STREAMS)])
        in_band = per_call_ms(lambda: pickle.loads(pickle.dumps(message, protocol=5)))
        ring = per_call_ms(lambda: reader.unpack(pickle.loads(pickle.dumps(writer.pack(message), protocol=5))))
        print(f"pickled in band: {in_band:.2f} ms; ring pack + pickle + unpack: {ring:.2f} ms per step message")
        reader.close()
        writer.close()


if __name__ == "__main__":
    main()
