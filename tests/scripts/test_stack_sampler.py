"""scripts/stack_sampler, first_requests.py and stack_window.py against a real server (tiny model, CPU)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

from tests.server_process import BASE_ARGS, ROOT, free_port


def test_the_first_requests_and_what_both_processes_did_meanwhile(tiny_v1, tmp_path):
    port, samples = free_port(), tmp_path / "stk"
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'scripts' / 'stack_sampler'}{os.pathsep}{ROOT}",
        "STACK_SAMPLER_DIR": str(samples),
        "OMP_NUM_THREADS": "1",
    }
    argv = [sys.executable, "-m", "tts_server", "--model", str(tiny_v1), "--port", str(port), "--voices-dir", ""]
    with (tmp_path / "server.log").open("wb") as log:
        server = subprocess.Popen([*argv, *BASE_ARGS], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        probe = subprocess.run(
            [sys.executable, "scripts/first_requests.py", f"http://127.0.0.1:{port}", "0.1", "0.1"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    assert probe.returncode == 0, probe.stderr + (tmp_path / "server.log").read_text()[-2000:]
    sent = [float(m) for m in re.findall(r"sent at monotonic ([0-9.]+): status 200, TTFB", probe.stdout)]
    assert len(sent) == 2, probe.stdout
    assert probe.stdout.count("submit;dur=") == 2  # each request's stages, from its Server-Timing header
    # The server and its engine process each left a record (the sampler runs in spawned children too).
    assert len(list(samples.glob("*.jsonl"))) >= 2
    window = subprocess.run(
        [sys.executable, "scripts/stack_window.py", str(samples), str(sent[0]), "--before", "0", "--after", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert window.count("=== process") >= 2
    assert "core.py" in window and "run" in window  # the engine core's loop, seen while it served
