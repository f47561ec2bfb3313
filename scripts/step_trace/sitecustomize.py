"""A trace of the engine loop for every Python process started with this folder on ``PYTHONPATH``.

For seeing what the engine process does while a burst of requests arrives: when each request was
added, when each step was launched, which rows it ran (decode rows, prompt rows, LM positions) and
how long each ``Engine.step`` call took. Python imports ``sitecustomize`` at start-up, in spawned
children too, so the engine-core process of ``python -m tts_server`` is traced as well as an
in-process benchmark.

It writes ``$STEP_TRACE_DIR/<pid>.jsonl`` (flushed every 0.5 s), one record per event, stamped
with ``time.monotonic()`` (the clock of the server's timeline):

- ``{"ev": "add", "t": ..., "dt": ...}``: one ``Engine.add_request`` (start, seconds);
- ``{"ev": "launch", "t": ..., "rows": ..., "prompt_rows": ..., "positions": ..., "waiting": ...}``;
- ``{"ev": "step", "t": ..., "dt": ..., "outputs": ...}``: one ``Engine.step`` call.

    STEP_TRACE_DIR=/tmp/trace PYTHONPATH=scripts/step_trace:$PYTHONPATH python -m tts_server ...
    python scripts/step_trace_report.py /tmp/trace

Nothing happens without ``STEP_TRACE_DIR``. Tracing costs a few microseconds per event.
"""

from __future__ import annotations

import dataclasses
import importlib.abc
import importlib.machinery
import json
import os
import re
import sys
import threading
import time
from typing import Any

_FLUSH_S = 0.5


class _Recorder:
    def __init__(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self._start()
        os.register_at_fork(after_in_child=self._start)  # the benchmark's workers are forked

    def _start(self) -> None:
        self.path = os.path.join(self.directory, f"{os.getpid()}.jsonl")
        self.records: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._flush_loop, name="step-trace", daemon=True).start()

    def add(self, record: dict[str, Any]) -> None:
        with self.lock:
            self.records.append(record)

    def write_now(self, record: dict[str, Any]) -> None:
        """For processes that may end with ``os._exit`` (forked workers): no flush would come."""
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _flush_loop(self) -> None:
        while True:
            time.sleep(_FLUSH_S)
            with self.lock:
                records, self.records = self.records, []
            if records:
                with open(self.path, "a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in records)


def _patch_engine(module: Any, recorder: _Recorder) -> None:
    engine_cls = module.Engine
    add_request, step, launch = engine_cls.add_request, engine_cls.step, engine_cls._launch

    def traced_add(self: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.monotonic()
        try:
            return add_request(self, *args, **kwargs)
        finally:
            recorder.add({"ev": "add", "t": t0, "dt": time.monotonic() - t0})

    def traced_step(self: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.monotonic()
        out = step(self, *args, **kwargs)
        recorder.add({"ev": "step", "t": t0, "dt": time.monotonic() - t0, "outputs": len(out)})
        return out

    def traced_launch(self: Any, outputs: Any) -> Any:
        t0 = time.monotonic()
        waiting = len(self.scheduler.waiting)
        schedule = self.scheduler.schedule

        def recorded_schedule() -> Any:
            plan = schedule()
            recorder.add(
                {
                    "ev": "launch",
                    "t": t0,
                    "rows": len(plan.rows),
                    "prompt_rows": sum(1 for r in plan.rows if r.count > 1),
                    "positions": sum(r.count for r in plan.rows),
                    "waiting": waiting,
                }
            )
            return plan

        self.scheduler.schedule = recorded_schedule
        try:
            return launch(self, outputs)
        finally:
            del self.scheduler.schedule

    engine_cls.add_request, engine_cls.step, engine_cls._launch = traced_add, traced_step, traced_launch


_KEY = re.compile(r"Request ([^. ]+)\.")  # the benchmark's texts start "Request <tag><index>."


def _patch_streaming(module: Any, recorder: _Recorder) -> None:
    """Each streamed response's timeline, absolute, when it ends (keyed by the benchmark's text)."""
    response_cls = module.AudioStreamResponse
    call = response_cls.__call__

    async def traced_call(self: Any, scope: Any, receive: Any, send: Any) -> None:
        try:
            await call(self, scope, receive, send)
        finally:
            spec = self.job.spec
            key = _KEY.search(spec.segments[0]) if spec.segments else None
            marks = dataclasses.asdict(spec.timeline)
            recorder.add({"ev": "server", "key": key.group(1) if key else None, **marks})

    response_cls.__call__ = traced_call


def _patch_client(module: Any, recorder: _Recorder) -> None:
    """Each benchmark request's send and first audio (``time.perf_counter()``: CLOCK_MONOTONIC on Linux)."""
    one_raw = module.one_raw

    async def traced_one_raw(conn: Any, target: Any, load: Any, rid: str, payload: bytes) -> Any:
        trace, conn = await one_raw(conn, target, load, rid, payload)
        key = _KEY.search(payload.decode("utf-8", "replace"))
        first = trace.arrivals[0] if trace.arrivals else None
        recorder.write_now(
            {"ev": "client", "key": key.group(1) if key else None, "sent": trace.submitted, "first": first}
        )
        return trace, conn

    module.one_raw = traced_one_raw


_PATCHES = {
    "voxcpm_engine.engine": _patch_engine,
    "tts_server.audio.responses": _patch_streaming,
    "perf.http_wire": _patch_client,
}


class _Finder(importlib.abc.MetaPathFinder):
    """Patches each module of ``_PATCHES`` right after it is first imported."""

    def __init__(self, recorder: _Recorder) -> None:
        self.recorder = recorder
        self.done: set[str] = set()

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        patch = _PATCHES.get(name)
        if patch is None or name in self.done:
            return None
        self.done.add(name)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader, recorder = spec.loader, self.recorder
        exec_module = loader.exec_module

        def exec_and_patch(module: Any) -> None:
            exec_module(module)
            patch(module, recorder)

        loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


if os.environ.get("STEP_TRACE_DIR"):
    sys.meta_path.insert(0, _Finder(_Recorder(os.environ["STEP_TRACE_DIR"])))
