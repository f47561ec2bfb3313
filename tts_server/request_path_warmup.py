"""Warm the server's own request path before ``/ready`` says 200, as the engine warms its kernels.

The engine's start-up (:mod:`voxcpm_engine.startup`) leaves nothing to compile after ready, but the server
process has first-use costs of its own that would land on the first request a load balancer sends:

* anyio loads its asyncio backend the first time a task group is entered, and Starlette enters one
  for every streamed response (the body and the disconnect listener): a module import of about
  20-30 ms inside the first stream's first write;
* each codec opens its native library (LAME, libav's encoders) and soxr its resampler the first
  time a format is encoded.

:func:`warm_request_path` runs those once, inside the serving event loop, while ``/ready`` is still
503. It exercises the real code, not stand-ins: a task group of the loop's anyio backend and a
short silence through every response format's encoder, streamed and whole.
"""

from __future__ import annotations

import asyncio

import anyio
import numpy as np

from tts_server.audio.encoders import encode_all, make_encoder
from tts_server.audio.formats import FORMATS

__all__ = ["warm_request_path"]

_SILENCE_S = 0.1


def _encode_every_format(sample_rate: int) -> None:
    silence = np.zeros(max(1, int(sample_rate * _SILENCE_S)), dtype=np.float32)
    for fmt in FORMATS:
        encode_all(fmt, sample_rate, silence)
        encoder = make_encoder(fmt, sample_rate, streaming=True)
        try:
            encoder.encode(silence)
            encoder.finish()
        finally:
            encoder.close()


async def warm_request_path(sample_rate: int) -> None:
    """Pay the server process's first-use costs now instead of on the first request.

    Args:
        sample_rate: The model's output rate (what the encoders will be fed).

    Raises:
        Exception: Whatever an encoder raises; a codec that cannot encode silence would fail every
            request in its format, so start-up fails instead of serving.
    """
    async with anyio.create_task_group() as tg:  # loads the backend Starlette's streams use
        tg.start_soon(anyio.sleep, 0)
    await asyncio.to_thread(_encode_every_format, sample_rate)
