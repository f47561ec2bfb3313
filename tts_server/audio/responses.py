"""HTTP responses of a generation job: streamed audio, a whole file, or server-sent events.

The streamed response sends its headers and then each encoded chunk as soon as the engine has
made it. Its ``__call__`` owns the job's end: whatever stops the response (the last chunk, a
client disconnect cancelling the body, an error) closes the job, so the slot can never leak. If
the engine fails mid-stream, or the shutdown grace ends before the audio does, the response is
broken off without the final empty chunk (the connection closes mid-body), and the client sees
an incomplete transfer instead of a file that merely looks short. An SSE stream says so in an
``error`` event instead.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import aclosing
from typing import Any

import orjson
from starlette.responses import Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from tts_server.audio.encoders import encode_all, make_encoder
from tts_server.audio.formats import FORMATS, AudioEncoder
from tts_server.jobs.job import Job
from tts_server.metrics import Outcome

__all__ = ["AudioStreamResponse", "audio_response", "sse_response"]


class AudioStreamResponse(StreamingResponse):
    """A streaming response bound to a job (see the module docstring).

    Args:
        job: The running job.
        body: Encoded bytes (made from ``job.stream()``).
        headers: Response headers.
        media_type: Content type.
    """

    def __init__(self, job: Job, body: AsyncIterator[bytes], headers: Mapping[str, str], media_type: str) -> None:
        super().__init__(body, headers=headers, media_type=media_type)
        self.job = job
        self._body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.job.stop_watching()  # from here the response reads the disconnect itself
        first_byte_pending = True

        async def send_timed(message: Message) -> None:
            nonlocal first_byte_pending
            await send(message)
            if first_byte_pending and message["type"] == "http.response.body" and message.get("body"):
                first_byte_pending = False
                marks = self.job.spec.timeline
                marks.first_byte = marks.now()
                self.job.svc.metrics.observe_stages(marks.stages())

        try:
            await self._stream_until_disconnect(receive, send_timed)
        finally:
            aclose = getattr(self._body, "aclose", None)
            if aclose is not None:
                await aclose()
            self.job.close(Outcome.CANCELLED)  # a no-op unless the body never ran to its end

    async def _stream_until_disconnect(self, receive: Receive, send: Send) -> None:
        """Stream the body; if the client disconnects first, stop at once and return normally.

        Starlette's ``StreamingResponse.__call__`` does the same through an anyio task group, whose
        cancel scope formats the task's ``repr`` (with its callbacks' source lines) on every
        response: about a tenth of the event loop's time per request. Here one plain task listens,
        and cancels this one on a disconnect; a cancellation from anywhere else still propagates.
        """
        task = asyncio.current_task()
        assert task is not None
        disconnected = False

        async def listen() -> None:
            nonlocal disconnected
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected = True
            task.cancel()

        listener = asyncio.get_running_loop().create_task(listen())
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            if not disconnected or task.uncancel() > 0:
                raise  # not (only) ours: the server is cancelling this request
        else:
            if disconnected:  # the body caught our cancellation itself: take the request back
                task.uncancel()
        finally:
            listener.cancel()

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for chunk in self.body_iterator:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if self.job.cut_off:
            return  # no final chunk: the server closes the connection mid-body
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _headers(job: Job, output_rate: int, extra: Mapping[str, str] | None) -> dict[str, str]:
    headers = {
        "X-Request-Id": job.spec.request_id,
        "X-Sample-Rate": str(output_rate),
        "X-Queue-Status": str(job.queue_position),
        "Cache-Control": "no-store",
        "X-Accel-Buffering": "no",  # proxies (nginx) must not hold chunks back
        "Server-Timing": job.spec.timeline.server_timing(),
    }
    headers.update(extra or {})
    return headers


async def _encoded(job: Job, encoder: AudioEncoder) -> AsyncIterator[bytes]:
    try:
        async with aclosing(job.stream()) as audio:
            async for chunk in audio:
                data = encoder.encode(chunk)
                if data:
                    yield data
        if not job.cut_off:
            tail = encoder.finish()
            if tail:
                yield tail
    finally:
        encoder.close()


async def audio_response(job: Job, fmt: str, *, stream: bool, headers: Mapping[str, str] | None = None) -> Response:
    """The job's audio in ``fmt``: streamed as made, or (``stream=False``) one file with exact headers.

    Raises:
        ApiError: (whole file) the job was cancelled or failed before its end.
    """
    info = FORMATS[fmt]
    disposition = {"Content-Disposition": f'inline; filename="speech.{info.extension}"'}
    if not stream:
        audio = await job.collect()
        # Encoding minutes of audio takes a while: keep the event loop serving the other streams.
        data, rate = await asyncio.to_thread(encode_all, fmt, job.svc.sample_rate, audio)
        job.spec.timeline.encoded = job.spec.timeline.now()
        job.svc.metrics.observe_stages(job.spec.timeline.stages())
        return Response(
            data, media_type=info.media_type, headers=_headers(job, rate, {**disposition, **(headers or {})})
        )
    encoder = make_encoder(fmt, job.svc.sample_rate)
    all_headers = _headers(job, encoder.output_sample_rate, {**disposition, **(headers or {})})
    return AudioStreamResponse(job, _encoded(job, encoder), all_headers, info.media_type)


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def _sse_events(job: Job, encoder: AudioEncoder, usage: Callable[[Job], dict[str, int]]) -> AsyncIterator[bytes]:
    try:
        async with aclosing(job.stream()) as audio:
            async for chunk in audio:
                data = encoder.encode(chunk)
                if data:
                    yield _event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
        if job.failure is not None:
            error = {"message": f"generation failed: {job.failure}", "type": "engine_error"}
            yield _event({"type": "error", "error": error})
            return
        if job.cut_off:
            error = {"message": "the server shut down before the audio was complete", "type": "shutdown"}
            yield _event({"type": "error", "error": error})
            return
        tail = encoder.finish()
        if tail:
            yield _event({"type": "speech.audio.delta", "audio": base64.b64encode(tail).decode()})
        yield _event({"type": "speech.audio.done", "usage": usage(job)})
    finally:
        encoder.close()


class _SseResponse(AudioStreamResponse):
    async def stream_response(self, send: Send) -> None:
        # An SSE stream reports a failure as an "error" event and ends normally.
        await StreamingResponse.stream_response(self, send)


def sse_response(
    job: Job, fmt: str, usage: Callable[[Job], dict[str, int]], headers: Mapping[str, str] | None = None
) -> Response:
    """The job's audio as server-sent events: ``speech.audio.delta`` (base64 of ``fmt`` bytes), then
    ``speech.audio.done`` with ``usage(job)`` (or an ``error`` event if the engine failed)."""
    encoder = make_encoder(fmt, job.svc.sample_rate)
    all_headers = _headers(job, encoder.output_sample_rate, headers)
    return _SseResponse(job, _sse_events(job, encoder, usage), all_headers, "text/event-stream")
