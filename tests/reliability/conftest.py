"""Reliability fixtures: one hardened server process shared by the tests that do not kill or stop it.

The shared server has an API key and a separate admin key, a voices directory in a temporary
folder, small body and prompt limits (so oversized input is cheap to send), a connection cap
high enough for hundreds of concurrent clients, and debug logging (so the security tests can
check that no key or audio reaches the log even at the most verbose level).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server_process import Server, running

API_KEY = "sk-reliability-api-4f7c1e9a2b"
ADMIN_KEY = "sk-reliability-admin-8d3b6a0f5e"
MAX_BODY = 256 * 1024  # above 100k characters of text, so that limit is the text field's
MAX_VOICE_BODY = 512 * 1024
MAX_PROMPT_SECONDS = 2.0
CONNECTION_CAP = 256


@pytest.fixture(scope="session")
def voices_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared server's voices directory (inside a folder of its own, to detect writes next to it)."""
    return tmp_path_factory.mktemp("voices-root") / "voices"


@pytest.fixture(scope="session")
def server(tiny_v2: Path, voices_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The shared server (see the module docstring); its log is ``server.log()``."""
    log = tmp_path_factory.mktemp("logs") / "shared-server.log"
    extra = (
        "--voices-dir", str(voices_dir), "--admin-key", ADMIN_KEY, "--log-level", "debug",
        "--max-body-bytes", str(MAX_BODY), "--max-voice-body-bytes", str(MAX_VOICE_BODY),
        "--max-prompt-seconds", str(MAX_PROMPT_SECONDS), "--max-concurrent-connections", str(CONNECTION_CAP),
    )  # fmt: skip
    with running(tiny_v2, log, *extra, api_key=API_KEY) as served:
        yield served
