"""``bash main.sh`` (run mode) end to end on this machine: synthetic model, server, /ready, example.py, clean stop."""

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import soundfile as sf

from tests.pty_run import run_on_a_terminal

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


class _FakeHub(BaseHTTPRequestHandler):
    """The few Hugging Face endpoints ``snapshot_download`` calls: repo info, its file tree, each file."""

    files = {"config.json": b'{"architecture": "test"}\n', "model.safetensors": bytes(2_000_000)}
    sha = "0123456789abcdef0123456789abcdef01234567"

    def log_message(self, *args: object) -> None:  # quiet test output
        pass

    def _answer(self, head: bool) -> None:
        path = self.path.split("?")[0]
        headers: dict[str, str] = {}
        if path.startswith("/api/models/") and "/tree/" in path:
            body = json.dumps(
                [{"type": "file", "path": n, "size": len(b), "oid": _sha1(b)} for n, b in self.files.items()]
            )
            data = body.encode()
        elif path.startswith("/api/models/"):
            repo = path.removeprefix("/api/models/").split("/revision/")[0]
            data = json.dumps(
                {"id": repo, "sha": self.sha, "siblings": [{"rfilename": n} for n in self.files]}
            ).encode()
        elif "/resolve/" in path and path.rsplit("/", 1)[-1] in self.files:
            data = self.files[path.rsplit("/", 1)[-1]]
            headers = {"X-Repo-Commit": self.sha, "ETag": f'"{_sha1(data)}"'}
        else:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


@pytest.fixture
def hub(tmp_path):
    """A local stand-in for huggingface.co and a repo id on it; the download main.sh makes is removed after."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    repo = f"progress-test/tiny-{uuid.uuid4().hex[:8]}"
    target = ROOT / "out" / "models" / repo.replace("/", "--")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("HF_") and k != "VOXCPM_PROGRESS"},
        "VENV": str(_venv(tmp_path)),
        "MODEL": repo,
        "HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
        "HF_HOME": str(tmp_path / "hf-home"),
    }
    try:
        yield env, target
    finally:
        server.shutdown()
        shutil.rmtree(target, ignore_errors=True)


def test_a_download_in_a_log_is_one_line_without_progress_bars(hub):
    env, target = hub
    proc = subprocess.run(["bash", "main.sh", "model"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(target.relative_to(ROOT))
    assert (target / "model.safetensors").stat().st_size == 2_000_000
    lines = proc.stderr.splitlines()
    assert lines[0] == f"main.sh: downloading {env['MODEL']} from Hugging Face"
    assert len(lines) == 2 and re.fullmatch(r"main\.sh: downloaded 2 files \(2\.0 MB\) in \d+ s", lines[1]), lines
    assert "\r" not in proc.stderr and "%|" not in proc.stderr  # huggingface_hub's bars are off in a log


def test_a_download_on_a_terminal_shows_its_progress(hub):
    env, target = hub
    returncode, out, err = run_on_a_terminal(["bash", "main.sh", "model"], ROOT, env, timeout=300)
    assert returncode == 0, err
    assert out.strip().splitlines()[-1] == str(target.relative_to(ROOT))
    assert "100%|" in err and "main.sh: downloaded 2 files" in err  # the bar, then the summary line
