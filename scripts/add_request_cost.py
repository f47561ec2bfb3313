"""What queuing a burst of requests costs the engine loop: ``Engine.add_request`` for N requests at once.

    python scripts/add_request_cost.py CHECKPOINT_DIR [--requests 128] [--repeats 5] [--device cpu]

Each repeat builds no new engine: it adds N text-only requests of the benchmark's text (tokenize,
lay out the prompt, make the request's state) and then aborts them, and prints the median and the
spread of the N adds in milliseconds. This is the work the engine process does between two steps
when a burst arrives, before any of it can be scheduled.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from perf.drivers import BASE_TEXT
from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.engine import Engine
from voxcpm_engine.io.checkpoint import load_checkpoint


def main() -> None:
    """Time N adds per repeat; print the median and the min-max."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    n = args.requests
    engine = Engine(
        load_checkpoint(args.checkpoint, device=args.device),
        EngineConfig(max_num_seqs=n, max_num_batched_tokens=max(4096, n), max_model_len=512),
    )
    times = []
    for repeat in range(args.repeats + 1):  # the first pass warms the tokenizer and the allocator
        start = time.perf_counter()
        for i in range(n):
            engine.add_request(f"r{repeat}-{i}", f"Request {repeat}-{i}. {BASE_TEXT}")
        elapsed = time.perf_counter() - start
        for i in range(n):
            engine.abort(f"r{repeat}-{i}")
        engine.step()  # delivers the aborts' final outputs
        if repeat:
            times.append(elapsed * 1e3)
    print(
        f"{n} adds: median {statistics.median(times):.1f} ms ({min(times):.1f}-{max(times):.1f}) "
        f"over {args.repeats} repeats, {statistics.median(times) / n * 1e3:.0f} us per request"
    )


if __name__ == "__main__":
    main()
