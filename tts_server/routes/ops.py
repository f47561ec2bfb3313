"""Endpoints for load balancers and operators: health, status, readiness, queue, cancel, metrics, info.

``/health`` and ``/status`` keep the fields that clients of the original VoxCPM server read,
exactly (extras are in new keys). None of these
endpoints is behind the connection cap, and none touches the engine except ``/metrics`` and
``/status``, which read the engine figures the app polls twice a second.

The probes (``/health``, ``/info``) answer without a key, but with ``--api-key`` set they list voice
names (``available_voices``, ``voices``) only to a request that carries the API or admin key, as
``GET /voices`` would; to anyone else the lists are empty. ``/queue`` and ``/cancel`` are scoped to
the caller's own requests (see :func:`tts_server.http.auth.request_owner`): an id of someone else's
request is ``not_found``, exactly like an id that does not exist.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tts_server.audio.formats import FORMATS
from tts_server.errors import JSONResponse
from tts_server.http.auth import has_work_access, request_owner
from tts_server.http.bodies import REQUEST_ID_PATTERN, parse_body
from tts_server.http.schemas import (
    CancelResponse,
    EngineFigures,
    EngineStartup,
    FormatDescription,
    HealthResponse,
    InferenceUsage,
    InfoResponse,
    Limits,
    QueueResponse,
    ReadyResponse,
    ServerFigures,
    SessionUsage,
    StartupFigures,
    StatusResponse,
    Usage,
)
from tts_server.jobs.registry import CancelReason, RequestState
from tts_server.jobs.session import ENDPOINT as SESSION_ENDPOINT
from tts_server.lifecycle import ServerState
from tts_server.loop_load import LoopFigures, LoopLoad
from tts_server.metrics import CONTENT_TYPE
from tts_server.services import Services, services
from voxcpm_engine.types import EngineLoad

__all__ = ["CancelRequest", "ops_routes"]


class CancelRequest(BaseModel):
    """Body of ``POST /cancel``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    request_id: str = Field(pattern=REQUEST_ID_PATTERN, description="The id given or returned in X-Request-Id.")


# How long POST /cancel waits for the engine to end an aborted request (one engine step, normally
# milliseconds), so that the id can be reused as soon as the answer arrives.
_CANCEL_SETTLE_S = 5.0


def _json(body: BaseModel, status_code: int = 200) -> JSONResponse:
    return JSONResponse(body.model_dump(mode="json"), status_code=status_code, headers={"Cache-Control": "no-store"})


def _pct(used: int, total: int) -> float:
    return round(100.0 * used / total, 1) if total else 0.0


def _voice_names(request: Request, svc: Services) -> list[str]:
    """Registered voice names, for a caller who could list them with ``GET /voices``; else none."""
    cfg = svc.config
    authorization = request.headers.get("authorization")
    if not has_work_access(authorization, api_key=cfg.api_key, admin_key=cfg.admin_key):
        return []
    return svc.voices.names()


def _owner(request: Request, svc: Services) -> str | None:
    """Whose requests this caller may list and cancel (None: everyone's)."""
    cfg = svc.config
    headers = request.headers
    return request_owner(
        headers.get("x-client-id"), headers.get("authorization"), api_key=cfg.api_key, admin_key=cfg.admin_key
    )


def _counts(state: Any) -> dict[str, int]:
    """Connection and inference-slot counts from ``app.state`` (its admission and queue exist from the first moment)."""
    return {
        "active_connections": state.admission.active,
        "max_concurrent_connections": state.admission.cap,
        "active_inference": state.queue.active,
        "queued_inference": state.queue.depth,
        "max_inference_slots": state.queue.slots,
    }


async def health(request: Request) -> Response:
    """Liveness plus the original server's counters; 503 once the engine is dead (the process is about to exit)."""
    svc = services(request)
    dead = svc.lifecycle.state is ServerState.ENGINE_DEAD
    body = HealthResponse(
        status="engine_dead" if dead else "ok",
        sample_rate=svc.sample_rate,
        available_voices=_voice_names(request, svc),
        **_counts(request.app.state),
        server_state=svc.lifecycle.state.value,
        engine_alive=svc.engines_alive,
    )
    return _json(body, 503 if dead else 200)


async def status(request: Request) -> Response:
    """The original server's load-balancer view, plus engine figures (``engine``) and start-up progress (``startup``).

    Answers from the server's first moment: while the engine starts, ``status`` is ``starting``,
    ``reason`` says which phase each engine is in, and ``startup`` has the counts.
    """
    state = request.app.state
    lifecycle = state.lifecycle
    svc: Services | None = getattr(state, "services", None)
    alive = svc is not None and svc.engines_alive
    c = _counts(state)
    load = svc.engine_load if svc is not None else EngineLoad()
    body = StatusResponse(
        status=lifecycle.state.value,
        can_accept_requests=lifecycle.accepting and alive and c["active_connections"] < c["max_concurrent_connections"],
        connections=Usage(
            active=c["active_connections"],
            max=c["max_concurrent_connections"],
            utilization_pct=_pct(c["active_connections"], c["max_concurrent_connections"]),
        ),
        inference=InferenceUsage(
            active=c["active_inference"],
            queued=c["queued_inference"],
            max_slots=c["max_inference_slots"],
            utilization_pct=_pct(c["active_inference"], c["max_inference_slots"]),
        ),
        sessions=_sessions(svc),
        engine=EngineFigures(
            alive=alive,
            running=load.running,
            waiting=load.waiting,
            steps=load.steps,
            kv_blocks_free=load.kv_blocks_free,
            kv_blocks_total=load.kv_blocks_total,
        ),
        server=_server(request),
        reason=None if lifecycle.accepting else _not_ready_reason(request),
        startup=_startup(request),
    )
    return _json(body)


def _server(request: Request) -> ServerFigures:
    load: LoopLoad | None = getattr(request.app.state, "loop_load", None)
    f = load.figures if load is not None else LoopFigures()
    return ServerFigures(
        loop_busy_pct=f.busy_pct,
        loop_lag_ms=f.lag_ms,
        loop_cpu_s=round(f.loop_cpu_s, 3),
        process_cpu_s=round(f.process_cpu_s, 3),
    )


def _sessions(svc: Services | None) -> SessionUsage:
    sessions = svc.registry.of_endpoint(SESSION_ENDPOINT) if svc is not None else []
    return SessionUsage(
        active=len(sessions),
        speaking=sum(1 for s in sessions if s.state is RequestState.RUNNING),
        waiting_for_text=sum(1 for s in sessions if s.state is RequestState.IDLE),
    )


def _startup(request: Request) -> StartupFigures | None:
    startup = getattr(request.app.state, "startup", None)
    if startup is None:
        return None
    engines = [
        EngineStartup(
            device=device,
            phase=p.phase.name.lower(),
            detail=p.phase.value,
            done=p.done,
            total=p.total,
            elapsed_s=round(p.elapsed_s, 1),
        )
        for device, p in startup.engines()
    ]
    ready_s = None if startup.ready_s is None else round(startup.ready_s, 1)
    return StartupFigures(step=None if ready_s is not None else startup.step.value, ready_s=ready_s, engines=engines)


def _not_ready_reason(request: Request) -> str:
    state = getattr(request.app.state, "lifecycle", None)
    startup = getattr(request.app.state, "startup", None)
    if startup is not None and (state is None or state.state is ServerState.STARTING):
        return startup.reason()
    if state is None:
        return "the server is starting"
    return state.reason or "the server is not taking work"


async def ready(request: Request) -> Response:
    """200 when the engine is loaded, warmed up and alive and the server takes work; else 503 with why."""
    state = getattr(request.app.state, "lifecycle", None)
    svc = getattr(request.app.state, "services", None)
    is_ready = state is not None and svc is not None and state.accepting and svc.engines_alive
    body = ReadyResponse(
        ready=is_ready,
        status=state.state.value if state is not None else "starting",
        reason=None if is_ready else _not_ready_reason(request),
    )
    return _json(body, 200 if is_ready else 503)


async def queue(request: Request) -> Response:
    """The caller's waiting request ids in the order they will run (every client's for the admin key)."""
    svc = services(request)
    owner = _owner(request, svc)
    pending = [rid for rid in svc.queue.pending() if owner is None or svc.registry.owned(rid, owner) is not None]
    return _json(QueueResponse(pending_requests=pending, queue_depth=len(pending), active_inference=svc.queue.active))


async def cancel(request: Request) -> Response:
    """Cancel one of the caller's queued or running requests by id (any request for the admin key).

    The answer comes once the engine has ended the request, so the id can be used again at once.
    """
    svc = services(request)
    body = await parse_body(request, CancelRequest)
    owner = _owner(request, svc)
    done = await svc.registry.cancel(body.request_id, CancelReason.CLIENT, owner=owner, settle_s=_CANCEL_SETTLE_S)
    return _json(CancelResponse(status="cancelled" if done else "not_found", request_id=body.request_id))


async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    svc = services(request)
    svc.metrics.observe_engine(dataclasses.replace(svc.engine_load, alive=svc.engines_alive))
    return Response(svc.metrics.render(), media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})


async def info(request: Request) -> Response:
    """Model, audio, formats and limits."""
    svc = services(request)
    cfg = svc.config
    body = InfoResponse(
        model=svc.model_info,
        sample_rate=svc.sample_rate,
        samples_per_patch=svc.model.samples_per_patch,
        formats=[FormatDescription(name=f.name, media_type=f.media_type) for f in FORMATS.values()],
        voices=_voice_names(request, svc),
        limits=Limits(
            max_text_chars=cfg.max_text_chars,
            max_body_bytes=cfg.max_body_bytes,
            max_prompt_seconds=cfg.max_prompt_seconds,
            max_model_len=cfg.max_model_len,
            max_inference_slots=svc.queue.slots,
            max_concurrent_connections=svc.admission.cap,
            queue_timeout_s=cfg.queue_timeout,
            default_max_generate_length=cfg.default_max_generate_length,
        ),
        fair_queue=cfg.fair_queue,
    )
    return _json(body)


def ops_routes() -> list[Route]:
    """The routes of this module."""
    return [
        Route("/health", health, methods=["GET"]),
        Route("/status", status, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/queue", queue, methods=["GET"]),
        Route("/cancel", cancel, methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/info", info, methods=["GET"]),
    ]
