"""Fixtures of the benchmark's tests: ``python -m tts_server`` on the tiny checkpoint, and the tiny HTTP app
(:mod:`tests.perf.tiny_http_app`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.perf.tiny_http_app import app, free_port, tiny_app_server  # noqa: F401 (fixtures for every module here)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tiny_v1, tmp_path_factory):
    """``python -m tts_server`` on the tiny checkpoint (CPU), if this checkout has the server."""
    if not (ROOT / "tts_server" / "__main__.py").is_file():
        pytest.skip("tts_server/__main__.py is not in this checkout")
    port = free_port()
    work = tmp_path_factory.mktemp("server")
    args = ["--model", str(tiny_v1), "--device", "cpu", "--port", str(port), "--host", "127.0.0.1"]
    args += [
        "--engine-threads",
        "1",
        "--voices-dir",
        str(work / "voices"),
        "--max-num-seqs",
        "2",
        "--max-concurrent-connections",
        "2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tts_server", *args],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"tts_server exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("tts_server did not become healthy in 90 s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
