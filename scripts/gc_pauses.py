"""Full garbage collections in the server process while it serves, with and without the start-up freeze.

Starts ``python -m tts_server`` (tiny model, CPU) under a ``gc.callbacks`` hook that stamps every
generation-2 collection with its wall time and duration, waits for ``/ready``, runs a burst of
requests through ``benchmark.py --mode http``, stops the server and prints the collections that
fell between ready and the end of the burst. With ``--no-freeze`` the server's
``voxcpm_engine.startup.freeze_heap`` (and the engine process's) does nothing, as before it existed.

    python scripts/gc_pauses.py [--no-freeze] [--concurrency 64] [--requests 256]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]

# Runs in the server process: the hook, then the server as `python -m tts_server` would.
_CHILD = """
import atexit, gc, json, os, runpy, sys, time
if os.environ.get("GC_PAUSES_NO_FREEZE") == "1":
    import voxcpm_engine.startup
    voxcpm_engine.startup.freeze_heap = lambda: 0.0
def main():
    events, began = [], {}
    def hook(phase, info):
        if info["generation"] == 2:
            if phase == "start":
                began["t"] = time.perf_counter()
            else:
                events.append((time.time(), (time.perf_counter() - began["t"]) * 1e3))
    gc.callbacks.append(hook)
    atexit.register(lambda: open(os.environ["GC_PAUSES_OUT"], "w").write(json.dumps(events)))
    sys.argv = ["tts_server", *sys.argv[1:]]
    runpy.run_module("tts_server", run_name="__main__")
if __name__ == "__main__":
    main()
"""


def main() -> None:
    """Run one server, one burst, and print the collections that landed on it."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-freeze", action="store_true", help="the server without its start-up gc.freeze()")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--port", type=int, default=8816)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gc-pauses-"))
    model, child, events_path = tmp / "model", tmp / "child.py", tmp / "events.json"
    subprocess.run(
        [sys.executable, "-m", "voxcpm_engine.tools.synthetic", "--preset", "tiny-v1", str(model)], cwd=ROOT, check=True
    )
    child.write_text(_CHILD)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "GC_PAUSES_OUT": str(events_path),
        "GC_PAUSES_NO_FREEZE": "1" if args.no_freeze else "0",
    }
    server_args = [
        "--model", str(model), "--device", "cpu", "--host", "127.0.0.1", "--port", str(args.port),
        "--voices-dir", "", "--max-num-seqs", str(args.concurrency), "--max-num-batched-tokens", "4096",
        "--max-model-len", "256", "--engine-threads", "1", "--log-level", "warning",
    ]  # fmt: skip
    with (tmp / "server.log").open("wb") as log:
        server = subprocess.Popen([sys.executable, str(child), *server_args], cwd=ROOT, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{args.port}"
    try:
        while True:
            if server.poll() is not None:
                sys.exit(f"the server exited:\n{(tmp / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        ready = time.time()
        bench = [
            sys.executable, "benchmark.py", "--server", url, "--concurrency", "1", str(args.concurrency),
            "--num-requests", str(args.requests), "--steps", "2", "--repeats", "2", "--http-workers", "1",
        ]  # fmt: skip
        bench_env = {**os.environ, "OMP_NUM_THREADS": "1"}
        out = subprocess.run(bench, cwd=ROOT, env=bench_env, capture_output=True, text=True)
        done = time.time()
        table = out.stdout.split("## Median", 1)[-1].strip().splitlines()
        print("\n".join(table[:6]))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    events = json.loads(events_path.read_text())
    serving = [(at - ready, ms) for at, ms in events if ready <= at <= done]
    print(
        f"freeze {'off' if args.no_freeze else 'on'}: {len(events)} full collections in the server process, "
        f"{len(serving)} while it served ({done - ready:.1f} s): "
        + ", ".join(f"{ms:.1f} ms at +{t:.1f} s" for t, ms in serving)
    )


if __name__ == "__main__":
    main()
