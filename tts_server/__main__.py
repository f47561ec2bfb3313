"""``python -m tts_server`` / ``tts-server``: read the settings, start the log output, serve (``tts_server.process``).

Exit codes: 0 after a drain (SIGTERM/SIGINT), 1 when the server could not start, 2 for invalid
settings, 3 when an engine died (for the supervisor to restart the server).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from tts_server.config import ConfigError, ServerConfig
from tts_server.config_sources import load_config
from tts_server.lifecycle import EXIT_START_FAILED
from tts_server.log_output import LogOutput

log = logging.getLogger("tts_server")

EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until it is told to stop; returns the process exit code."""
    try:
        config = load_config(sys.argv[1:] if argv is None else argv, os.environ)
    except ConfigError as exc:
        print(f"tts-server: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    output = LogOutput(config.log_level)  # log calls on the event loop never wait on stderr
    output.start()
    try:
        return _serve(config)
    finally:
        output.stop()


def _serve(config: ServerConfig) -> int:
    log.info("settings: %s", config.redacted())
    if config.api_key is None:
        log.warning("no --api-key: generation endpoints are open to anyone who can reach %s", config.host)
    # Imported only now: torch and the engine client take seconds to import, and a settings error
    # or --help should answer at once.
    from tts_server.process import run_server

    try:
        return run_server(config)
    except Exception as exc:  # the lifespan failed (engine could not start, bad voices dir...)
        # hypercorn wraps the lifespan's traceback in its message: its last line says what failed
        lines = [line for line in str(exc).strip().strip("'").splitlines() if line.strip()]
        log.error("the server could not start: %s", lines[-1] if lines else type(exc).__name__)
        log.debug("start-up failure in full", exc_info=exc)
        return EXIT_START_FAILED


if __name__ == "__main__":
    sys.exit(main())
