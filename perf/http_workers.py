"""The raw HTTP client's runs spread over worker processes that start together on a barrier.

One event loop sending 128 requests and then reading 128 fast streams measures itself, not the
server; here in-flight slot ``s`` belongs to worker process ``s % workers``, each worker opens its
slots' keep-alive connections before the clock starts, and all send together. An open-loop run
(Poisson arrivals) gives request ``i`` to worker ``i % workers``, which sends it at its time after
the common start on a free keep-alive connection, or a new one if none is free.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from perf.http_wire import Connection, HttpLoad, Target, one_raw
from perf.metrics import StreamTrace

# A worker that dies before the barrier is noticed by the parent, which aborts it; the wait is bounded
# (this plus the longest a phase may take) only for when the parent itself is gone.
_BARRIER_TIMEOUT_S = 600.0
# Not fork: the parent may have threads (an engine, torch's pools). The forkserver forks each worker
# from one clean process that has imported the main module once (spawn re-imports it per worker).
_START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


@dataclass(frozen=True)
class _Share:
    """One process's part of one run.

    Attributes:
        slots: Closed loop: its in-flight requests at most (one connection each). Open loop: the
            connections opened before the clock (more open as arrivals need them).
        jobs: Its requests in order, each ``(index in the run, request id, text)``.
        at: Open loop: each job's send time, seconds after the start; empty: a closed loop.
    """

    slots: int
    jobs: tuple[tuple[int, str, str], ...]
    at: tuple[float, ...] = ()


async def _open_slots(target: Target, pool: list[Connection | None], slots: int) -> list[Connection | None]:
    """``pool`` with its first ``slots`` connections open, the usable ones kept, the rest opened together.

    A connection that cannot be opened stays ``None``: its slot's first request tries again and
    records why it failed, as a request to a server that is down should.
    """
    pool = pool + [None] * (slots - len(pool))

    async def ready(conn: Connection | None) -> Connection | None:
        if conn is not None and conn.usable():
            return conn
        if conn is not None:
            conn.close()
        try:
            return await Connection.open(target)
        except OSError:  # TimeoutError included
            return None

    return [*await asyncio.gather(*(ready(c) for c in pool[:slots])), *pool[slots:]]


async def _run_slots(
    target: Target, load: HttpLoad, payloads: list[tuple[str, bytes]], conns: list[Connection | None]
) -> tuple[list[StreamTrace], list[Connection | None]]:
    """``payloads`` (``(request id, request)``) through one slot per connection, a closed loop.

    Returns:
        The traces in ``payloads``' order and each slot's connection afterwards.
    """
    jobs = iter(enumerate(payloads))  # shared: a slot that is free takes the next request
    traces: list[StreamTrace] = [StreamTrace("", 0.0)] * len(payloads)  # every one is replaced

    async def slot(conn: Connection | None) -> Connection | None:
        for k, (rid, payload) in jobs:
            traces[k], conn = await one_raw(conn, target, load, rid, payload)
        return conn

    # gather starts the slots in order, and each runs to its first read before the next: all the
    # first requests leave back to back.
    return traces, list(await asyncio.gather(*(slot(conn) for conn in conns)))


async def _run_arrivals(
    target: Target,
    load: HttpLoad,
    payloads: list[tuple[str, bytes]],
    at: tuple[float, ...],
    start: float,
    conns: list[Connection | None],
) -> tuple[list[StreamTrace], list[Connection | None]]:
    """``payloads`` sent at ``start + at[k]`` whatever is in flight (an open loop).

    Each takes a free keep-alive connection, else opens one. Its TTFB counts from its scheduled time, so a
    late send (this loop behind) is the server's time too, as a client arriving then would see it.

    Returns:
        The traces in ``payloads``' order and the connections left open.
    """
    free = [c for c in conns if c is not None]
    traces: list[StreamTrace] = [StreamTrace("", 0.0)] * len(payloads)  # every one is replaced

    async def one(k: int, rid: str, payload: bytes) -> None:
        await asyncio.sleep(max(0.0, start + at[k] - time.perf_counter()))
        trace, conn = await one_raw(free.pop() if free else None, target, load, rid, payload)
        trace.submitted = start + at[k]
        traces[k] = trace
        if conn is not None:
            free.append(conn)

    await asyncio.gather(*(one(k, rid, payload) for k, (rid, payload) in enumerate(payloads)))
    return traces, list(free)


async def _run_shares(
    target: Target, load: HttpLoad, shares: list[_Share], sync: Callable[[], None] | None = None
) -> list[tuple[float, float, list[StreamTrace]]]:
    """Run ``shares`` one after the other on this event loop, with a pool of connections kept across them.

    Args:
        target: The server.
        load: What each request asks for.
        shares: This process's part of each run.
        sync: Called (blocking) once when this process is ready to connect and once when its
            connections are open, before the clock starts: the worker processes' barrier. Blocking
            the loop there is fine: nothing is in flight.

    Returns:
        Per share: when its clock started, when its last request ended, and its traces in job order.
    """
    pool: list[Connection | None] = []
    out = []
    try:
        for share in shares:
            payloads = [(rid, target.request(load.body(text))) for _, rid, text in share.jobs]
            if sync is not None:
                sync()  # every process is up: the connections of all of them open close to the start
            pool = await _open_slots(target, pool, share.slots)
            if sync is not None:
                sync()
            start = time.perf_counter()
            if share.at:
                traces, pool = await _run_arrivals(target, load, payloads, share.at, start, pool)
            else:
                traces, used = await _run_slots(target, load, payloads, pool[: share.slots])
                pool = [*used, *pool[share.slots :]]
            out.append((start, time.perf_counter(), traces))
    finally:
        for conn in pool:
            if conn is not None:
                conn.close()
        await asyncio.sleep(0)  # let the transports finish closing before the loop goes
    return out


def _default_workers(concurrency: int) -> int:
    """Load-generator processes for a level: one per two CPUs (the server may share the host), at most 8."""
    return min(concurrency, max(1, (os.cpu_count() or 2) // 2), 8)


def _plan(runs: list[tuple[int, str]], concurrency: int, workers: int | None) -> tuple[list[list[_Share]], int]:
    """Split runs of ``(requests, tag)`` over the worker processes, the same way for each run.

    In-flight slot ``s`` belongs to worker ``s % workers`` and request ``i`` to slot ``i % concurrency``
    (a closed loop with equal requests gives each slot those requests anyway); each worker's slots
    take its requests in order.

    Returns:
        ``plan[run][worker]`` and the number of workers (no more than the slots that have requests).
    """
    from perf.drivers import request_text  # here: perf.drivers imports torch, which a worker need not load

    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, not {concurrency}")
    workers = _default_workers(concurrency) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, not {workers}")
    workers = max(1, min(workers, concurrency, max(n for n, _ in runs)))
    plan = []
    for n, tag in runs:
        slots = [0] * workers
        for s in range(min(concurrency, n)):
            slots[s % workers] += 1
        jobs: list[list[tuple[int, str, str]]] = [[] for _ in range(workers)]
        for i in range(n):
            jobs[i % concurrency % workers].append((i, f"{tag}h{i}", request_text(i, tag)))
        plan.append([_Share(slots[w], tuple(jobs[w])) for w in range(workers)])
    return plan, workers


def _plan_open(offsets: list[float], tag: str, workers: int | None, preopen: int) -> tuple[list[_Share], int]:
    """Split one open-loop run (arrival ``offsets``, seconds) over the workers: request ``i`` to worker ``i % workers``.

    Returns:
        The shares (each with ``preopen`` connections opened before the clock, at most its requests) and
        the number of workers (no more than the requests).
    """
    from perf.drivers import request_text  # here: perf.drivers imports torch, which a worker need not load

    workers = _default_workers(max(1, len(offsets))) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, not {workers}")
    workers = max(1, min(workers, len(offsets)))
    shares = []
    for w in range(workers):
        mine = range(w, len(offsets), workers)
        jobs = tuple((i, f"{tag}o{i}", request_text(i, tag)) for i in mine)
        shares.append(_Share(min(preopen, len(jobs)), jobs, tuple(offsets[i] for i in mine)))
    return shares, workers


def _merge(shares: list[_Share], done: list[tuple[float, float, list[StreamTrace]]]) -> tuple[list[StreamTrace], float]:
    """One run's traces in request order, and its wall time from the common start to the last byte."""
    indexed = []
    for share, (_, _, part) in zip(shares, done, strict=True):
        indexed += [(job[0], t) for job, t in zip(share.jobs, part, strict=True)]
    traces = [t for _, t in sorted(indexed, key=lambda item: item[0])]
    start = min(d[0] for d in done)
    ends = [t.arrivals[-1] for t in traces if t.arrivals]
    return traces, (max(ends) if ends else max(d[1] for d in done)) - start


def _worker_main(
    index: int, server: str, load: HttpLoad, shares: list[_Share], barrier: Any, wait_s: float, results: Any
) -> None:
    """A worker process: its shares of the runs, each started on the shared barrier; the results to the parent."""

    def sync() -> None:
        barrier.wait(wait_s)

    try:
        done = asyncio.run(_run_shares(Target.parse(server), load, shares, sync))
    except BaseException as exc:  # every failure goes to the parent, which raises it
        barrier.abort()  # the others stop waiting for this one
        results.put((index, None, f"{type(exc).__name__}: {exc}"))
        return
    results.put((index, done, None))


def _run_workers(
    server: str, load: HttpLoad, plan: list[list[_Share]], workers: int
) -> list[tuple[list[StreamTrace], float]]:
    """Run ``plan`` on ``workers`` processes; per run its traces and wall time (see :func:`_merge`).

    Raises:
        RuntimeError: A worker failed or died (the others are stopped).
    """
    ctx = multiprocessing.get_context(_START_METHOD)
    barrier = ctx.Barrier(workers)
    results = ctx.Queue()
    # A worker that finished a run waits at the barrier for the slowest: as long as a slot's requests may take.
    per_slot = max((-(-len(s.jobs) // s.slots) for run in plan for s in run if s.slots), default=0)
    wait_s = _BARRIER_TIMEOUT_S + per_slot * load.timeout_s
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(w, server, load, [run[w] for run in plan], barrier, wait_s, results),
            name=f"http-load-{w}",
            daemon=True,
        )
        for w in range(workers)
    ]
    done: dict[int, list[tuple[float, float, list[StreamTrace]]]] = {}
    try:
        for proc in procs:
            proc.start()
        while len(done) < workers:
            # Seen gone before the wait: whatever such a worker sent is already in the pipe.
            gone = [w for w, proc in enumerate(procs) if proc.exitcode is not None and w not in done]
            try:
                w, runs, error = results.get(timeout=0.5)
            except queue.Empty:
                if gone:
                    code = procs[gone[0]].exitcode
                    raise RuntimeError(f"HTTP load worker {gone[0]} exited with code {code} without results") from None
                continue
            if error is not None:
                raise RuntimeError(f"HTTP load worker {w} failed: {error}")
            done[w] = runs
    except BaseException:
        barrier.abort()
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        raise
    finally:
        for proc in procs:
            if proc.pid is not None:
                proc.join(10)
        results.close()
    return [_merge(run, [done[w][k] for w in range(workers)]) for k, run in enumerate(plan)]


async def run_raw_open(
    server: str, load: HttpLoad, offsets: list[float], tag: str, workers: int | None, preopen: int = 8
) -> tuple[list[StreamTrace], float]:
    """One open-loop run with the raw client: request ``i`` sent ``offsets[i]`` s after the start; traces and wall time.

    ``preopen`` connections per worker are opened before the clock; each request's ``submitted`` is its
    scheduled time (see :func:`_run_arrivals`).
    """
    target = Target.parse(server)
    if not offsets:
        return [], 0.0
    shares, workers = _plan_open(offsets, tag, workers, preopen)
    return (await _execute(server, target, load, [shares], workers))[0]


async def run_raw(
    server: str, load: HttpLoad, runs: list[tuple[int, str]], concurrency: int, workers: int | None
) -> list[tuple[list[StreamTrace], float]]:
    """Runs of ``(requests, tag)`` one after the other with the raw client; per run its traces and wall time."""
    target = Target.parse(server)  # a bad URL fails here, not in a worker
    plan, workers = _plan(runs, concurrency, workers)
    return await _execute(server, target, load, plan, workers)


async def _execute(
    server: str, target: Target, load: HttpLoad, plan: list[list[_Share]], workers: int
) -> list[tuple[list[StreamTrace], float]]:
    """Run ``plan`` (per run, one share per worker): on this loop for one worker, else in worker processes."""
    if workers == 1:
        done = await _run_shares(target, load, [run[0] for run in plan])
        return [_merge(run, [d]) for run, d in zip(plan, done, strict=True)]
    # The processes are waited for in a thread: this event loop stays free for its other tasks.
    return await asyncio.get_running_loop().run_in_executor(None, _run_workers, server, load, plan, workers)
