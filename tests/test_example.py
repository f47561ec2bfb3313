"""``example.py`` against a real ``python -m tts_server`` on the tiny model: wav/mp3 files, voices, cancel."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile

from tests.server_process import free_port, running

ROOT = Path(__file__).resolve().parents[1]
VOICE = "alice"


@pytest.fixture(scope="module")
def server(tiny_v1: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real server process on the tiny VoxCPM1.5-layout model, with one prompt voice; yields its URL."""
    extra = (
        "--max-num-seqs", "4", "--max-num-batched-tokens", "256", "--max-model-len", "1024",
        "--voices-dir", "", "--default-max-generate-length", "5", "--shutdown-grace", "2", "--log-level", "warning",
    )  # fmt: skip
    with running(tiny_v1, tmp_path_factory.mktemp("server") / "server.log", *extra) as proc:
        url = proc.url
        wav = io.BytesIO()
        soundfile.write(wav, (np.random.default_rng(0).standard_normal(16000) * 0.1), 16000, format="WAV")
        voice = {"name": VOICE, "prompt_audio": base64.b64encode(wav.getvalue()).decode(), "prompt_text": "Hello."}
        assert httpx.post(f"{url}/voices", json=voice, timeout=60).status_code == 201
        yield url


def run_example(server: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``example.py`` against ``server``."""
    command = [sys.executable, str(ROOT / "example.py"), "--server", server, *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_streams_a_wav_file_that_soundfile_reads(server: str, tmp_path: Path) -> None:
    out = tmp_path / "hello.wav"
    result = run_example(server, "--text", "Hello there.", "--out", str(out), "--voice", VOICE)
    assert result.returncode == 0, result.stderr
    assert "TTFB:" in result.stdout and "RTF:" in result.stdout and "stream ended: complete" in result.stdout
    samples, rate = soundfile.read(out)
    assert rate == httpx.get(f"{server}/info").json()["sample_rate"]
    assert samples.ndim == 1 and len(samples) > 0
    assert soundfile.info(str(out)).frames == len(samples)  # the patched header matches the data


def test_streams_an_mp3_file(server: str, tmp_path: Path) -> None:
    out = tmp_path / "hello.mp3"
    result = run_example(
        server, "--text", "Hello there.", "--out", str(out), "--temperature", "0.8", "--cfg-value", "1.5"
    )
    assert result.returncode == 0, result.stderr
    samples, rate = soundfile.read(out)
    assert rate == httpx.get(f"{server}/info").json()["sample_rate"] and len(samples) > 0


def test_cancel_after_ends_the_stream_as_cancelled(server: str, tmp_path: Path) -> None:
    out = tmp_path / "cut.wav"
    text = "A long sentence for the cancellation test. " * 8
    result = run_example(
        server, "--text", text, "--out", str(out), "--max-generate-length", "1000", "--cancel-after", "0.8"
    )
    assert result.returncode == 0, result.stderr
    assert "stream ended: cancelled" in result.stdout
    samples, _ = soundfile.read(out)
    spp = httpx.get(f"{server}/info").json()["samples_per_patch"]
    assert len(samples) < 1000 * spp  # cut short, far from the requested length
    deadline = time.monotonic() + 5
    while httpx.get(f"{server}/status").json()["inference"]["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(f"{server}/status").json()["inference"]["active"] == 0


def test_list_voices(server: str) -> None:
    result = run_example(server, "--list-voices")
    assert result.returncode == 0, result.stderr
    assert VOICE in result.stdout.split()


def test_http_error_exits_non_zero_with_the_server_message(server: str, tmp_path: Path) -> None:
    result = run_example(server, "--voice", "nobody", "--out", str(tmp_path / "x.wav"))
    assert result.returncode == 1
    assert "HTTP 404" in result.stderr and "voice 'nobody' not found" in result.stderr


def test_unreachable_server_exits_non_zero(tmp_path: Path) -> None:
    result = run_example(f"http://127.0.0.1:{free_port()}", "--out", str(tmp_path / "x.wav"))
    assert result.returncode == 1 and "cannot talk to" in result.stderr
