"""The validity rules of the server's settings: one line per rule, naming the setting it checks.

``ServerConfig.__post_init__`` runs them once and turns the first broken rule into a
``ConfigError`` that names the flag and the variable.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from tts_server.config_parsers import none_or_at_least

if TYPE_CHECKING:
    from tts_server.config import ServerConfig

__all__ = ["DTYPES", "EVENT_LOOPS", "LOG_LEVELS", "setting_checks"]

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
DTYPES = ("bfloat16", "float16", "float32")
EVENT_LOOPS = ("asyncio", "uvloop")
_DEVICE = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")


def setting_checks(c: ServerConfig) -> list[tuple[str, bool, str]]:
    """``(setting, holds, what it must be)`` for every rule, in the order they are reported."""
    return [
        ("model", bool(c.model), "is required (a checkpoint directory)"),
        ("device", all(_DEVICE.match(d) for d in c.device_list), "must be auto, cpu, cuda, cuda:N or a list"),
        ("device", "auto" not in c.device_list or len(c.device_list) == 1, "auto cannot be in a list"),
        ("dtype", c.dtype is None or c.dtype in DTYPES, f"must be one of {', '.join(DTYPES)}"),
        ("engine_threads", none_or_at_least(c.engine_threads, 1), "must be >= 1"),
        (
            "max_concurrent_connections",
            c.max_concurrent_connections is None or c.max_concurrent_connections >= c.inference_slots,
            "must be >= max-num-seqs x devices",
        ),
        ("queue_timeout", c.queue_timeout > 0, "must be > 0"),
        ("port", 0 <= c.port <= 65535, "must be in [0, 65535]"),
        ("event_loop", c.event_loop in EVENT_LOOPS, f"must be one of {', '.join(EVENT_LOOPS)}"),
        ("log_level", c.log_level in LOG_LEVELS, f"must be one of {', '.join(LOG_LEVELS)}"),
        ("max_body_bytes", c.max_body_bytes >= 1024, "must be >= 1024"),
        ("max_voice_body_bytes", c.max_voice_body_bytes >= 1024, "must be >= 1024"),
        ("max_prompt_seconds", c.max_prompt_seconds > 0, "must be > 0"),
        ("max_text_chars", c.max_text_chars >= 1, "must be >= 1"),
        ("shutdown_grace", c.shutdown_grace >= 0, "must be >= 0"),
        ("send_timeout", 0 < c.send_timeout < math.inf, "must be > 0 and finite"),
        ("body_timeout", 0 < c.body_timeout < math.inf, "must be > 0 and finite"),
        ("stream_buffer_seconds", 0 < c.stream_buffer_seconds < math.inf, "must be > 0 and finite"),
        ("stream_write_seconds", 0 <= c.stream_write_seconds < math.inf, "must be >= 0 and finite"),
        ("stream_lead_seconds", 0 <= c.stream_lead_seconds < math.inf, "must be >= 0 and finite"),
        ("default_max_generate_length", none_or_at_least(c.default_max_generate_length, 1), "must be >= 1"),
        ("retry_after", c.retry_after >= 0, "must be >= 0"),
        ("audio_ring_slots", c.audio_ring_slots >= 0, "must be >= 0"),
        ("session_idle_timeout", 0 < c.session_idle_timeout < math.inf, "must be > 0 and finite"),
        ("session_text_wait", 0 <= c.session_text_wait <= 10, "must be in [0, 10]"),
        ("session_max_chars", c.session_max_chars >= 1, "must be >= 1"),
        ("session_context_seconds", 0 <= c.session_context_seconds < math.inf, "must be >= 0 and finite"),
        ("api_key", c.api_key is None or c.api_key.strip() == c.api_key != "", "must be non-blank"),
        (
            "admin_key",
            c.admin_key is None or c.admin_key.strip() == c.admin_key != "",
            "must be non-blank",
        ),
    ]
