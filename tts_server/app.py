"""``create_app``: the Starlette app, its lifespan (engine, voices, queue) and its error handling.

Engine death policy: the server does not restart a dead engine itself. When an engine process
dies, every open stream ends at once (the engine client fails them), queued requests get 503,
``/ready`` and new work get 503, and the lifecycle asks the process runner (``tts_server.__main__``)
to stop; the process then exits with code 3. A supervisor (systemd, Kubernetes) restarts the
whole server cleanly, which is simpler and safer than reloading a model inside a process whose
GPU state is unknown. With several devices, the death of any one engine is handled the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from tts_server.config import ServerConfig
from tts_server.errors import ApiError
from tts_server.http.admission import Admission, AdmissionMiddleware
from tts_server.http.transport import TransportGuard
from tts_server.jobs.queue import InferenceQueue
from tts_server.jobs.registry import CancelReason, InflightRegistry
from tts_server.lifecycle import Lifecycle
from tts_server.loop_load import LoopLoad, watch_loop
from tts_server.metrics import ServerMetrics
from tts_server.openai_errors import error_response_for
from tts_server.request_path_warmup import warm_request_path
from tts_server.routes.generate import generate_routes
from tts_server.routes.openai import openai_routes
from tts_server.routes.openapi import openapi_routes
from tts_server.routes.ops import ops_routes
from tts_server.routes.playground import playground_routes
from tts_server.routes.stream_session import stream_session_routes
from tts_server.routes.voices import voice_routes
from tts_server.services import Services
from tts_server.startup import StartStep, StartupState
from tts_server.text.normalize import load_normalizers
from tts_server.voices.store import VoiceStore
from voxcpm_engine.io.tokenizer import TextTokenizer
from voxcpm_engine.proc.client import AsyncEngine
from voxcpm_engine.proc.engine_client import EngineClient
from voxcpm_engine.proc.errors import EngineError
from voxcpm_engine.proc.group import AsyncEngineGroup
from voxcpm_engine.startup import freeze_heap
from voxcpm_engine.types import EngineLoad

__all__ = ["create_app", "cut_all", "drain"]

log = logging.getLogger(__name__)

_MONITOR_PERIOD_S = 0.1  # how soon an engine death is acted on
_STATS_EVERY = 5  # monitor ticks between engine stats polls (0.5 s)
_CUT_SETTLE_S = 1.0  # after the grace: time for cut-off requests to unwind


def _make_engine(config: ServerConfig) -> EngineClient:
    devices = config.resolved_devices()
    kwargs: dict[str, Any] = {"dtype": config.dtype, "num_threads": config.engine_threads}
    if len(devices) == 1:
        return AsyncEngine(config.model, config.engine_config(), devices[0], **kwargs)
    return AsyncEngineGroup(config.model, config.engine_config(), devices, **kwargs)


async def _monitor(svc: Services) -> None:
    """Poll engine stats for /status and /metrics; on an engine death, fail over to the supervisor."""
    tick = 0
    while True:
        dead = [e for e in svc.engines if not e.is_alive]
        if dead:
            svc.engine_lost("; ".join(f"engine on {e.device} (pid {e.pid}) is gone" for e in dead))
            return
        if tick % _STATS_EVERY == 0:
            try:
                svc.engine_load = EngineLoad.from_stats(await svc.engine.stats())
            except EngineError:  # died during the call: the next tick sees it
                pass
        tick += 1
        await asyncio.sleep(_MONITOR_PERIOD_S)


async def drain(app: Starlette, grace_s: float) -> None:
    """Stop taking work, give in-flight requests ``grace_s`` seconds, then cut off what is left.

    ``/ready`` turns 503 at once and new work gets 503; queued and streaming requests continue
    until they end or the grace period is over. Then every request still in flight is cancelled:
    a stream breaks off (no clean end: the client can tell its audio is incomplete), a wait for a
    request body ends, and connections whose client does not read are aborted; the app waits at
    most :data:`_CUT_SETTLE_S` more, so the process exits within about a second of the grace.
    """
    lifecycle: Lifecycle = app.state.lifecycle
    lifecycle.drain()
    admission: Admission = app.state.admission
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    while admission.active and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if admission.active:
        await cut_all(app)
        log.warning("shutdown grace of %g s over: cut off %d request(s) still in flight", grace_s, admission.active)
        end = loop.time() + _CUT_SETTLE_S
        while admission.active and loop.time() < end:
            await asyncio.sleep(0.02)


async def cut_all(app: Starlette) -> None:
    """Cancel every request now: registered jobs, waits for request bodies, stalled writes."""
    svc: Services | None = getattr(app.state, "services", None)
    if svc is not None:
        await svc.registry.cancel_all(CancelReason.SHUTDOWN)
    app.state.admission.cut()
    transport_guard = getattr(app.state, "transport_guard", None)
    if transport_guard is not None:
        transport_guard.cut()


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response_for(request.url.path, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "not_found" if exc.status_code == 404 else "method_not_allowed" if exc.status_code == 405 else "http_error"
    return error_response_for(
        request.url.path, ApiError(exc.status_code, str(exc.detail), type=kind, headers=exc.headers)
    )


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    # Starlette re-raises the exception after this response so that the server logs it with its
    # traceback (hypercorn: "Error in ASGI Framework"); one line here ties it to the request.
    log.error("unexpected error in %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    error = ApiError(500, f"internal error ({type(exc).__name__}); see the server log", type="internal_error")
    return error_response_for(request.url.path, error)


def create_app(
    config: ServerConfig, *, engine: EngineClient | None = None, freeze_when_ready: bool = False
) -> Starlette:
    """Build the app; its lifespan starts the engine(s) and loads the voices.

    Args:
        config: The server settings.
        engine: An engine already started on the serving event loop, to use instead of starting
            one from ``config`` (embedding, tests); the caller keeps it and stops it.
        freeze_when_ready: Once started, move every object of the process into the permanent GC
            generation (:func:`voxcpm_engine.startup.freeze_heap`), so no full collection of start-up's
            objects lands on the first requests. For a process that is only this server (the
            process runner); an embedding process keeps its heap as it is.

    Returns:
        The Starlette app (``app.state`` gets ``config``, ``lifecycle``, ``queue``, ``metrics``,
        ``admission`` now, ``loop_load`` when it starts serving, and ``services``, ``engine``,
        ``voices``, ``model``, ``registry`` once started).
    """
    given_engine = engine
    lifecycle = Lifecycle()
    queue = InferenceQueue(config.inference_slots, fair=config.fair_queue)
    admission = Admission(
        config.connection_cap,
        lifecycle,
        api_key=config.api_key,
        admin_key=config.voice_admin_key,
        retry_after=config.retry_after,
        body_timeout=config.body_timeout,
    )
    metrics = ServerMetrics(lambda: admission.active, lambda: queue.depth, lambda: queue.active)
    admission.on_reject = metrics.rejected
    admission.on_cut = metrics.cut

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The socket serves from the first moment: /ready and /status answer (503, with the
        # engine's start-up progress) while the engine loads, captures and warms up.
        owned = given_engine is None
        loop_load = app.state.loop_load = LoopLoad()  # made here: it reads the CPU time of the loop's thread
        metrics.bind_loop(lambda: loop_load.figures)
        watcher = asyncio.create_task(watch_loop(loop_load), name="loop-watch")
        engine = _make_engine(config) if given_engine is None else given_engine
        app.state.startup = StartupState(engine, owned)
        held: dict[str, Any] = {}
        starting = asyncio.create_task(_start(app, engine, owned, held), name="server-start")
        try:
            yield
        finally:
            if not starting.done():
                starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            svc: Services | None = getattr(app.state, "services", None)
            try:
                if svc is not None:
                    await svc.registry.cancel_all(CancelReason.SHUTDOWN)
            finally:
                lifecycle.stopped()
                watcher.cancel()
                if (monitor := held.get("monitor")) is not None:
                    monitor.cancel()
                if owned:
                    await engine.stop()
                if (voices := held.get("voices")) is not None:
                    voices.close()

    async def _start(app: Starlette, engine: EngineClient, owned: bool, held: dict[str, Any]) -> None:
        """Start the engine(s), tokenizer and voices, then open for work; a failure ends the process (exit 1)."""
        try:
            if owned:
                await engine.start()
            app.state.startup.step = StartStep.TOKENIZER_AND_VOICES
            model = engine.model_info
            tokenizer = await asyncio.to_thread(TextTokenizer.from_dir, config.model)
            await asyncio.to_thread(load_normalizers)  # ~0.5 s once, not on the first request
            voices_dir = Path(config.voices_dir) if config.voices_dir else None
            voices = held["voices"] = VoiceStore(
                voices_dir,
                engine,
                model_version=model.version,
                patch_size=model.patch_size,
                latent_dim=model.latent_dim,
                max_prompt_seconds=config.max_prompt_seconds,
                sample_rate=model.sample_rate,
                samples_per_patch=model.samples_per_patch,
            )
            await voices.load_all()
            app.state.startup.step = StartStep.REQUEST_PATH
            await warm_request_path(model.sample_rate)
            registry = InflightRegistry(queue, engine)
            svc = Services(config, lifecycle, admission, metrics, engine, queue, registry, voices, tokenizer, model)
            svc.engine_load = EngineLoad.from_stats(await engine.stats())
            app.state.services = svc
            app.state.engine, app.state.voices, app.state.model = engine, voices, model
            app.state.registry = registry
            held["monitor"] = asyncio.create_task(_monitor(svc), name="engine-monitor")
            if freeze_when_ready:
                freeze_heap()
            app.state.startup.finished()
            lifecycle.ready()
            log.info(
                "serving %s (VoxCPM%s) on %s: %d inference slots, connection cap %d, %d voice(s); ready in %.1f s",
                config.model, model.version, ", ".join(e.device for e in engine.engines), queue.slots, admission.cap,
                len(voices.names()), app.state.startup.ready_s,
            )  # fmt: skip
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("the server could not start: %s", exc)
            log.debug("start-up failure in full", exc_info=exc)
            lifecycle.start_failed(str(exc))

    app = Starlette(
        routes=[
            *generate_routes(),
            *openai_routes(),
            *stream_session_routes(),
            *ops_routes(),
            *voice_routes(),
            *openapi_routes(),
            *playground_routes(),
        ],
        middleware=[Middleware(AdmissionMiddleware, admission=admission)],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _unexpected_error},
        lifespan=lifespan,
    )
    app.state.config = config
    app.state.lifecycle = lifecycle
    app.state.queue = queue
    app.state.metrics = metrics
    app.state.admission = admission
    # Served by tts_server.process (and the tests' server) with this guard on every connection.
    app.state.transport_guard = TransportGuard(config.send_timeout, on_stall=lambda: metrics.cut("send_stall"))
    app.state.max_body_bytes = config.max_body_bytes
    app.state.max_voice_body_bytes = config.max_voice_body_bytes
    return app
