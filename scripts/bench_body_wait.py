"""What the admission middleware's wait for a request body costs when the body is already there.

    python scripts/bench_body_wait.py
    PYTHONPATH=<another tree> python scripts/bench_body_wait.py    # that tree's admission.py

Times ``_BodyDeadline`` on an ``asyncio.Queue`` holding the message (hypercorn's ``receive`` is a
queue's ``get``), 20,000 waits per run, and prints the best of five runs in microseconds per wait.
"""

from __future__ import annotations

import asyncio

from tts_server.http.admission import Admission, _BodyDeadline
from tts_server.lifecycle import Lifecycle

WAITS = 20_000


async def _best_us() -> float:
    queue: asyncio.Queue = asyncio.Queue()
    admission = Admission(1, Lifecycle())
    message = {"type": "http.request", "body": b"{}", "more_body": False}
    loop = asyncio.get_running_loop()
    best = float("inf")
    for _ in range(5):
        start = loop.time()
        for _ in range(WAITS):
            queue.put_nowait(message)
            await _BodyDeadline(queue.get, admission)()
        best = min(best, (loop.time() - start) / WAITS)
    return best * 1e6


def main() -> None:
    """Print the best of five runs."""
    print(f"{asyncio.run(_best_us()):.1f} us per wait for a body already received")


if __name__ == "__main__":
    main()
