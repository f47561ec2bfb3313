"""A sampling stack recorder for every Python process started with this folder on ``PYTHONPATH``.

For finding where a process (or its main thread) spends a short stall that no profiler attached
from outside can see: ptrace may be forbidden on the box, and the stall may sit in a spawned engine
process. Python imports ``sitecustomize`` at start-up, in spawned children too (they inherit the
environment), so each process gets a daemon thread that looks at every thread's stack every 2 ms.

It writes ``$STACK_SAMPLER_DIR/<pid>.jsonl``: one record whenever the main thread's stack changes,
and one for every sample that came late (more than 12 ms after the one before: some thread held
the GIL), then with the other threads' stacks too. Records carry ``time.monotonic()``, the same
clock as the server's timeline, so ``scripts/stack_window.py`` can cut out the moment of one request.

    STACK_SAMPLER_DIR=/tmp/stk PYTHONPATH=scripts/stack_sampler:$PYTHONPATH python -m tts_server ...

Nothing happens without ``STACK_SAMPLER_DIR``. The sampler costs a little CPU in every process
(one stack walk per 2 ms); do not compare timings taken with it against timings taken without.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from types import FrameType

_PERIOD_S = 0.002
_LATE_S = 0.012
_FLUSH_S = 0.5


def _describe(frame: FrameType | None, depth: int = 8) -> str:
    out = []
    while frame is not None and len(out) < depth:
        code = frame.f_code
        out.append(f"{os.path.basename(code.co_filename)}:{frame.f_lineno}:{code.co_name}")
        frame = frame.f_back
    return " < ".join(out)


def _sample(directory: str) -> None:
    path = os.path.join(directory, f"{os.getpid()}.jsonl")
    main, me = threading.main_thread().ident, threading.get_ident()
    last_stack, last_t, flushed = None, time.monotonic(), time.monotonic()
    pending: list[dict[str, object]] = []
    while True:
        time.sleep(_PERIOD_S)
        now = time.monotonic()
        frames = sys._current_frames()
        stack = _describe(frames.get(main)) if main in frames else ""
        late = now - last_t > _LATE_S
        if stack != last_stack or late:
            record: dict[str, object] = {"t": round(now, 4), "gap_ms": round((now - last_t) * 1e3, 1), "main": stack}
            if late:
                names = {t.ident: t.name for t in threading.enumerate()}
                record["others"] = {
                    names.get(ident, str(ident)): _describe(frame, 4)
                    for ident, frame in frames.items()
                    if ident not in (main, me)
                }
            pending.append(record)
            last_stack = stack
        last_t = now
        if pending and now - flushed > _FLUSH_S:
            with open(path, "a") as fh:
                fh.write("".join(json.dumps(r) + "\n" for r in pending))
            pending.clear()
            flushed = now


if os.environ.get("STACK_SAMPLER_DIR"):
    os.makedirs(os.environ["STACK_SAMPLER_DIR"], exist_ok=True)
    threading.Thread(target=_sample, args=(os.environ["STACK_SAMPLER_DIR"],), name="stack-sampler", daemon=True).start()
