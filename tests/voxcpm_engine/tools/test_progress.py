"""Progress bars of the tools: on stderr only when it is a terminal (or forced), never in piped output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pty_run import run_on_a_terminal
from voxcpm_engine.tools.progress import ENV, echo, progress_bar

ROOT = Path(__file__).resolve().parents[3]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def _piped(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=_env(**env), capture_output=True, text=True, timeout=120
    )


def _on_a_terminal(args: list[str]) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal (100 columns) and stdout on a pipe: (exit code, stdout, stderr)."""
    return run_on_a_terminal([sys.executable, *args], ROOT, _env(), timeout=120)


def _no_bar(stderr: str) -> None:
    assert "\r" not in stderr and "%|" not in stderr and "it/s" not in stderr, stderr[-500:]


@pytest.fixture(scope="module")
def batch(tiny_v1, tmp_path_factory) -> list[str]:
    """``say --batch`` of two requests on the tiny model (its arguments, less ``--out-dir``)."""
    path = tmp_path_factory.mktemp("batch") / "reqs.jsonl"
    lines = [{"id": "a", "text": "One.", "max_steps": 2}, {"id": "b", "text": "Two.", "max_steps": 3}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return ["-m", "voxcpm_engine.tools.say", "--model", str(tiny_v1), "--batch", str(path), "--device", "cpu"]


def test_say_batch_counts_requests_and_audio_on_a_terminal(batch, tmp_path):
    rc, out, err = _on_a_terminal([*batch, "--out-dir", str(tmp_path / "tty")])
    assert rc == 0, err
    assert "synthesizing" in err and "2/2" in err and "s of audio" in err and "req" in err
    assert "\r" not in out and "wrote 2 files" in out  # the bar stays off stdout


def test_say_batch_is_quiet_when_piped(batch, tmp_path):
    proc = _piped([*batch, "--out-dir", str(tmp_path / "piped")])
    assert proc.returncode == 0, proc.stderr
    _no_bar(proc.stderr)
    assert "synthesizing" not in proc.stderr and "wrote 2 files" in proc.stdout


def test_checkpoint_writing_shows_parameters_on_a_terminal_only(tmp_path):
    rc, out, err = _on_a_terminal(["-m", "voxcpm_engine.tools.synthetic", "--preset", "tiny-v1", str(tmp_path / "t")])
    assert rc == 0, err
    assert "writing tiny-v1" in err and "100%" in err and "param" in err and "done" in err
    assert out.startswith("wrote tiny-v1 checkpoint")
    proc = _piped(["-m", "voxcpm_engine.tools.synthetic", "--preset", "tiny-v1", str(tmp_path / "p")])
    assert proc.returncode == 0, proc.stderr
    _no_bar(proc.stderr)
    assert "writing tiny-v1" not in proc.stderr
    # Forced on (a CI log that wants it), through a pipe.
    proc = _piped(["-m", "voxcpm_engine.tools.synthetic", "--preset", "tiny-v1", str(tmp_path / "f")], **{ENV: "1"})
    assert proc.returncode == 0 and "writing tiny-v1" in proc.stderr and "100%" in proc.stderr


@pytest.mark.parametrize(("value", "shown"), [("1", True), ("on", True), ("0", False), ("off", False), ("", False)])
def test_the_environment_forces_bars_on_or_off(monkeypatch, capsys, value, shown):
    # pytest's captured stderr is not a terminal: unforced (""), the bar is off.
    monkeypatch.setenv(ENV, value)
    with progress_bar(3, desc="work", unit="run") as bar:
        assert bar.disable is not shown  # (closing a bar disables it: asked while it is open)
        bar.update(3)
        echo("a line for stdout")
    captured = capsys.readouterr()
    assert ("work" in captured.err and "3/3" in captured.err) is shown
    assert captured.out == "a line for stdout\n"
