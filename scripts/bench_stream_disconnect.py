"""CPU per streamed response of watching for a disconnect: Starlette's anyio task group against ours.

``StreamingResponse.__call__`` (ASGI spec < 2.4, as hypercorn declares) runs the body beside a
disconnect listener in an anyio task group, whose cancel scope formats the task's ``repr`` when
the body ends; ``AudioStreamResponse._stream_until_disconnect`` uses one plain listener task. Both
stream one one-byte chunk here, and the loop turns once after each, so the figure is the
mechanism's own cost. Run: ``python
scripts/bench_stream_disconnect.py [--n 5000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from starlette.responses import StreamingResponse

from tts_server.audio.responses import AudioStreamResponse


class _Bare(AudioStreamResponse):
    """The disconnect watch of :class:`AudioStreamResponse` around Starlette's plain body loop (no job)."""

    def __init__(self, body: object) -> None:
        StreamingResponse.__init__(self, body)

    stream_response = StreamingResponse.stream_response


async def _body():
    yield b"x"


async def _main(n: int) -> None:
    never = asyncio.Event()

    async def receive() -> dict:
        await never.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        pass

    scope = {"type": "http", "asgi": {"spec_version": "2.3"}}
    cases = {
        "starlette (anyio task group)": lambda: StreamingResponse(_body())(scope, receive, send),
        "ours (one listener task)": lambda: _Bare(_body())._stream_until_disconnect(receive, send),
    }
    for name, make in cases.items():
        for _ in range(2):  # the first pass warms up
            c0 = time.thread_time()
            for _ in range(n):
                await make()
                await asyncio.sleep(0)  # one loop turn per response, as a server gives: the listener ends
            per = (time.thread_time() - c0) / n * 1e6
        print(f"{name}: {per:.1f} us of CPU per response")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="responses per measurement")
    asyncio.run(_main(parser.parse_args().n))


if __name__ == "__main__":
    main()
