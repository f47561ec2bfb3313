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


def _venv(tmp_path: Path) -> Path:
    """A venv view of the interpreter running the tests, marked as set up for this pyproject.toml."""
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
    return venv


def test_main_sh_brings_up_the_server_and_writes_the_examples_audio(tmp_path):
    venv = _venv(tmp_path)
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


def test_an_offline_download_fails_in_one_line_then_falls_back_to_the_synthetic_model(tmp_path):
    # Nothing listens on the port: the same failure as a machine without network, on any machine.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("HF_")},
        "VENV": str(_venv(tmp_path)),
        "MODEL": "offline-test/no-such-repo",
        "HF_ENDPOINT": f"http://127.0.0.1:{_free_port()}",
        "HF_HOME": str(tmp_path / "hf-home"),
    }
    proc = subprocess.run(["bash", "main.sh", "model"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "out/models/synthetic-tiny-v1"  # the directory it will serve
    lines = proc.stderr.splitlines()
    notice = next(i for i, line in enumerate(lines) if "NOTICE" in line)
    before = lines[: notice - 1]  # up to the notice's frame of #s
    assert before[0] == "main.sh: downloading offline-test/no-such-repo from Hugging Face"
    assert len(before) == 2 and before[1].startswith("main.sh: could not download offline-test/no-such-repo: ")
    assert "Error" in before[1]  # the reason, e.g. "LocalEntryNotFoundError: ... Connection refused"
    assert "Traceback" not in proc.stderr and "File " not in proc.stderr
    assert not (ROOT / "out" / "models" / "offline-test--no-such-repo").exists()
