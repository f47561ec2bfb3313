"""The request-path warm-up pays the server process's first-use costs before ready."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# A fresh interpreter: this test process has long since loaded anyio's backend and the codecs.
_PROBE = textwrap.dedent(
    """
    import asyncio, sys
    from tts_server.request_path_warmup import warm_request_path

    backend = "anyio._backends._asyncio"
    assert backend not in sys.modules, "imported before the warm-up: the probe proves nothing"
    asyncio.run(warm_request_path(16000))
    assert backend in sys.modules, "the warm-up did not load anyio's asyncio backend"
    print("ok")
    """
)


def test_warm_up_loads_the_backend_of_streamed_responses() -> None:
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_warm_up_fails_loudly_when_a_codec_cannot_encode(monkeypatch) -> None:
    import asyncio

    from tts_server import request_path_warmup

    def broken(fmt: str, sample_rate: int, audio) -> bytes:
        raise RuntimeError(f"{fmt}: codec missing")

    monkeypatch.setattr(request_path_warmup, "encode_all", broken)
    with pytest.raises(RuntimeError, match="codec missing"):
        asyncio.run(request_path_warmup.warm_request_path(16000))
