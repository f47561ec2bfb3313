"""The first requests to a server that has just said ready: time to first byte and ``Server-Timing``.

    python scripts/first_requests.py http://127.0.0.1:8000 0.3 0.5 2

Waits for ``/ready``, then sends one streamed 20-patch request after each delay (seconds, one
after the other, each on a new connection) and prints its TTFB, the ``time.monotonic()`` at which
it was sent (for ``scripts/stack_window.py``) and the server's stages. Standard library only, so it
runs on a bare GPU box.
"""

from __future__ import annotations

import http.client
import json
import sys
import time
from urllib.parse import urlsplit


def _ready(host: str, port: int, timeout_s: float = 900.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(host, port, timeout=2)
            conn.request("GET", "/ready")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"no /ready 200 from {host}:{port} in {timeout_s:.0f} s")


def main() -> None:
    """Wait for /ready, then one request per delay given."""
    url = urlsplit(sys.argv[1])
    host, port = url.hostname or "127.0.0.1", url.port or 80
    delays = [float(d) for d in sys.argv[2:]] or [0.3]
    _ready(host, port)
    for i, delay in enumerate(delays):
        time.sleep(delay)
        text = f"First request {i}. The quick brown fox jumps over the lazy dog."
        body = json.dumps({"target_text": text, "max_generate_length": 20, "response_format": "pcm"})
        conn = http.client.HTTPConnection(host, port)
        sent, start = time.monotonic(), time.perf_counter()
        conn.request("POST", "/generate", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        first = response.read(2)
        ttfb_ms = (time.perf_counter() - start) * 1e3
        response.read()
        conn.close()
        status = response.status if first else f"{response.status} (no audio)"
        print(f"request {i} (after {delay} s) sent at monotonic {sent:.4f}: status {status}, TTFB {ttfb_ms:.1f} ms")
        print(f"    {response.getheader('Server-Timing')}", flush=True)


if __name__ == "__main__":
    main()
