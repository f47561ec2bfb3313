"""``example_agent.py`` against a real ``python -m tts_server`` on the tiny model: a reply spoken as it is
written, a barge-in, and a refused connection."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile

from example_agent import tokens
from tests.server_process import Server, running

ROOT = Path(__file__).resolve().parents[1]
KEY = "agent-key"
PATCH = 7056  # tiny-v1 (VoxCPM1.5 layout): samples a patch


@pytest.fixture(scope="module")
def server(tiny_v1: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    extra = ("--max-num-seqs", "2", "--voices-dir", "", "--session-text-wait", "0.2", "--log-level", "warning")
    with running(tiny_v1, tmp_path_factory.mktemp("server") / "server.log", *extra, api_key=KEY) as proc:
        yield proc


def run_agent(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(ROOT / "example_agent.py"), "--server", server.url, "--token-delay", "0.005", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_tokens_keep_every_character():
    text = "Thanks for waiting! Your order, number 4521, left this morning."
    assert "".join(tokens(text, random.Random(1))) == text


def test_a_reply_is_spoken_sentence_by_sentence(server: Server, tmp_path: Path):
    out = tmp_path / "reply.wav"
    text = "Hello there. This is the second sentence. And a third."
    result = run_agent(server, "--api-key", KEY, "--text", text, "--max-generate-length", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("segment_started") == 3 and "first audio" in result.stdout
    assert '"continued": true' in result.stdout  # later segments go on from the one before
    samples, rate = soundfile.read(out, dtype="int16")
    assert rate == 44100 and len(samples) == 3 * 3 * PATCH


def test_barge_in_clears_then_answers(server: Server, tmp_path: Path):
    out = tmp_path / "cut.wav"
    args = ("--api-key", KEY, "--max-generate-length", "40", "--barge-in", "0.3", "--out", str(out))
    result = run_agent(server, *args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    cleared = next(i for i, line in enumerate(lines) if " cleared " in line)
    assert any("caller speaks: clear" in line for line in lines[:cleared])
    assert any("Sorry, go ahead." in line for line in lines[cleared:])  # the answer to the interruption
    assert len(soundfile.read(out)[0]) < 40 * PATCH * 3  # the reply was cut short


def test_a_refused_connection_exits_non_zero(server: Server, tmp_path: Path):
    result = run_agent(server, "--api-key", "wrong", "--out", str(tmp_path / "x.wav"))
    assert result.returncode == 1 and "refused: HTTP 401" in result.stderr
