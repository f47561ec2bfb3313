"""``bash main.sh`` (run mode) end to end on this machine: synthetic model, server, /ready, example.py, clean stop."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_main_sh_brings_up_the_server_and_writes_the_examples_audio(tmp_path):
    # A venv view of the interpreter running the tests, marked as set up for this pyproject.toml.
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    # A wrapper, not a symlink: a symlinked interpreter outside its venv finds no pyvenv.cfg and
    # starts as the base Python without the venv's packages (seen with pyenv's CPython 3.11).
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    digest = subprocess.run(
        "cat pyproject.toml | sha1sum | cut -c1-12", shell=True, cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    (venv / f".installed-{digest}").touch()
    out = ROOT / "out" / "example.wav"
    out.unlink(missing_ok=True)
    env = {
        **os.environ,
        "VENV": str(venv),
        "MODEL": "synthetic",
        "PORT": str(_free_port()),
        "HOST": "127.0.0.1",
        "FOREGROUND": "0",
        "TTS_VOICES_DIR": str(tmp_path / "voices"),
        "TTS_ENGINE_THREADS": "1",
    }
    proc = subprocess.run(["bash", "main.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert "SYNTHETIC random-weight checkpoint" in log and "NOISE" in log  # the loud notice
    info = sf.info(out)
    assert info.frames > 0 and info.samplerate > 0
