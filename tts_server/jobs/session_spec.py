"""A streaming session's settings (:class:`SessionSpec`), validated by the route that opens it."""

from __future__ import annotations

from dataclasses import dataclass

from tts_server.text.incremental import BufferPolicy
from voxcpm_engine.types import GenerationParams, Voice

__all__ = ["SessionSpec"]


@dataclass(frozen=True)
class SessionSpec:
    """A session's settings, validated by the route.

    Attributes:
        request_id: Client-facing id (``/cancel``, ``/queue``).
        client_id: Fair-queue key.
        voice: The session's voice (None: zero-shot).
        lora: LoRA voice name in the engine.
        params: Sampling settings (segment ``k`` uses ``seed + k`` when a seed is given).
        policy: When buffered text is released.
        text_wait_s: Buffered text is spoken after this long without a new fragment.
        max_session_chars: Most characters of text one session may send.
        max_pending_chars: Most characters buffered and not yet spoken.
        context_patches: Longest previous segment (in patches) a segment continues from (0: never).
        context_chars: Longest previous segment text a segment continues from.
        buffer_seconds: Most seconds of audio made and not yet taken by the transport.
    """

    request_id: str
    client_id: str
    voice: Voice | None
    lora: str | None
    params: GenerationParams
    policy: BufferPolicy
    text_wait_s: float
    max_session_chars: int
    max_pending_chars: int
    context_patches: int
    context_chars: int
    buffer_seconds: float
