"""A true burst against a running server: N requests written back to back on N open connections.

    python scripts/burst_stages.py http://127.0.0.1:8000 [--requests 128] [--rounds 5] [--steps 2]

A client library (and the benchmark's workers on a small machine) sends a burst more slowly than
the server parses it, so the server never sees the requests of a burst all waiting at once. Here
every connection is opened and used once first (kept alive), then all N requests are written in
one tight loop from one thread (each a single ``send``), and each response is read to its end.
Prints, per round and as the median over rounds, the p50 and p90 of the server's own stages
(``Server-Timing``: parse, queue, submit, total) and of the time to the first audio byte.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import statistics
import time

from perf.http_wire import Target
from perf.server_timing import parse_server_timing

STAGES = ("parse", "queue", "submit", "total")


def _read_all(socks: list[socket.socket], sent_at: float) -> list[tuple[dict[str, float], float]]:
    """Read each chunked response to its terminating chunk; (Server-Timing stages, first-byte ms) each."""
    sel = selectors.DefaultSelector()
    state = {}
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        state[s] = {"data": bytearray(), "audio": None}
    pending = set(socks)
    while pending:
        for key, _ in sel.select(timeout=30):
            s = key.fileobj
            chunk = s.recv(1 << 16)
            st = state[s]
            now = time.perf_counter()
            st["data"] += chunk
            head_end = st["data"].find(b"\r\n\r\n")
            if st["audio"] is None and head_end >= 0 and len(st["data"]) > head_end + 4:
                st["audio"] = now  # the first body byte (the first chunk of audio)
            if not chunk or st["data"].endswith(b"\r\n0\r\n\r\n"):
                sel.unregister(s)
                pending.discard(s)
    out = []
    for s in socks:
        st = state[s]
        head = bytes(st["data"]).split(b"\r\n\r\n", 1)[0].decode("latin-1")
        if not head.startswith("HTTP/1.1 200"):
            raise RuntimeError(f"not a 200: {head.splitlines()[0] if head else '(nothing)'}")
        timing = [line.split(":", 1)[1] for line in head.split("\r\n") if line.lower().startswith("server-timing:")]
        stages = parse_server_timing(",".join(timing))
        out.append((stages, (st["audio"] - sent_at) * 1e3))
        s.setblocking(True)
    return out


def main() -> None:
    """Warm N connections, then send ``--rounds`` bursts and print the stage percentiles."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="patches per request (short: the burst is the point)")
    args = ap.parse_args()
    target = Target.parse(args.url)

    def request(i: int) -> bytes:
        body = {"target_text": f"Burst request number {i}.", "max_generate_length": args.steps,
                "min_generate_length": args.steps, "response_format": "pcm"}  # fmt: skip
        return target.request(body)

    socks = [socket.create_connection((target.host, target.port)) for _ in range(args.requests)]
    for s in socks:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i, s in enumerate(socks):  # one request each, one at a time: connections open and kept alive
        s.sendall(request(i))
        _read_all([s], time.perf_counter())
    rows: dict[str, list[float]] = {}
    for r in range(args.rounds):
        time.sleep(0.5)
        payloads = [request(i) for i in range(len(socks))]
        sent_at = time.perf_counter()
        for s, p in zip(socks, payloads, strict=True):
            s.sendall(p)
        results = _read_all(socks, sent_at)
        line = []
        for name in (*STAGES, "first byte"):
            picked = (fb if name == "first byte" else st.get(name) for st, fb in results)
            values = sorted(t for t in picked if t is not None)
            if not values:
                continue
            p50, p90 = values[len(values) // 2], values[int(len(values) * 0.9)]
            rows.setdefault(f"{name} p50", []).append(p50)
            rows.setdefault(f"{name} p90", []).append(p90)
            line.append(f"{name} {p50:.1f}/{p90:.1f}")
        print(f"round {r + 1}: " + ", ".join(line) + " (ms, p50/p90)")
    print("median over rounds: " + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in rows.items()))
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
