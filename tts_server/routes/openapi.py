"""``GET /openapi.json`` (OpenAPI 3.1, built from the pydantic request and response models) and ``GET /docs``.

Every endpoint is listed with its request body, its success responses and the error responses
it can give; a ``default`` error response covers the statuses any endpoint may answer (400 for a
duplicate ``Authorization``, 401/403 from auth, 408 for a body not in by ``--body-timeout``, 503
from the connection cap or shutdown, 500), so a schema-driven fuzzer finds every response
documented. The docs page is a self-contained HTML page that renders the document (no CDN).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from tts_server.audio.formats import FORMATS
from tts_server.errors import JSONResponse
from tts_server.http import schemas as s
from tts_server.routes.generate import GenerateRequest
from tts_server.routes.openai import SpeechRequest
from tts_server.routes.ops import CancelRequest
from tts_server.routes.voices import AddPromptBody, EncodeBody, RemovePromptBody, VoiceBody

__all__ = ["build_openapi", "openapi_routes"]

_REF = "#/components/schemas/{model}"
_AUDIO = {f.media_type: {"schema": {"type": "string", "contentMediaType": f.media_type}} for f in FORMATS.values()}
# One server-sent event (OpenAPI before 3.2 has the schema of text/event-stream describe each event):
# ``data`` is a JSON document (speech.audio.delta / speech.audio.done) as text.
_SSE_EVENT = {
    "type": "object",
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
    "required": ["data"],
}
_AUDIO_HEADERS = {
    "X-Request-Id": {"description": "The request's id (for /cancel)", "schema": {"type": "string"}},
    "X-Sample-Rate": {"description": "Sample rate of the audio, Hz", "schema": {"type": "string"}},
    "X-Queue-Status": {"description": "Requests waiting ahead at arrival", "schema": {"type": "string"}},
}


@dataclass(frozen=True)
class _Op:
    method: str
    path: str
    summary: str
    body: type[BaseModel] | None = None
    ok: dict[str, Any] = field(default_factory=dict)  # status -> response object
    errors: tuple[int, ...] = ()
    openai: bool = False
    path_params: tuple[str, ...] = ()


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(model=model.__name__)}}},
    }


def _audio(description: str, sse: bool = False) -> dict[str, Any]:
    content = dict(_AUDIO)
    if sse:
        content["text/event-stream"] = {"schema": _SSE_EVENT}
    return {"description": description, "headers": _AUDIO_HEADERS, "content": content}


_GEN_ERRORS = (400, 404, 409, 413, 415, 503)
_VOICE_ERRORS = (400, 404, 409, 413, 415)
_OPS: tuple[_Op, ...] = (
    _Op("post", "/generate", "Speak text; audio streams as it is made", GenerateRequest,
        {"200": _audio("Audio in response_format")}, _GEN_ERRORS),
    _Op("post", "/v1/audio/speech", "OpenAI-compatible speech", SpeechRequest,
        {"200": _audio("Audio in response_format, or server-sent events", sse=True)}, _GEN_ERRORS, openai=True),
    _Op("get", "/health", "Liveness and load counters", None,
        {"200": _json(s.HealthResponse, "Serving"), "503": _json(s.HealthResponse, "The engine is dead")}),
    _Op("get", "/status", "Load-balancer status", None, {"200": _json(s.StatusResponse, "Status")}),
    _Op("get", "/ready", "Readiness", None,
        {"200": _json(s.ReadyResponse, "Ready"), "503": _json(s.ReadyResponse, "Not ready")}),
    _Op("get", "/queue", "Waiting requests in order", None, {"200": _json(s.QueueResponse, "The queue")}),
    _Op("post", "/cancel", "Cancel a queued or running request", CancelRequest,
        {"200": _json(s.CancelResponse, "Cancelled, or not found")}, (400, 413, 415)),
    _Op("get", "/metrics", "Prometheus metrics", None,
        {"200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}),
    _Op("get", "/info", "Model, formats and limits", None, {"200": _json(s.InfoResponse, "Server information")}),
    _Op("get", "/voices", "List voices", None, {"200": _json(s.VoiceList, "The voices")}),
    _Op("post", "/voices", "Add a voice", VoiceBody,
        {"201": _json(s.VoiceDescription, "Added"), "200": _json(s.VoiceDescription, "Replaced")}, _VOICE_ERRORS),
    _Op("get", "/voices/{name}", "Describe a voice", None, {"200": _json(s.VoiceDescription, "The voice")},
        (400, 404), path_params=("name",)),
    _Op("put", "/voices/{name}", "Add or replace a voice", VoiceBody,
        {"201": _json(s.VoiceDescription, "Added"), "200": _json(s.VoiceDescription, "Replaced")}, _VOICE_ERRORS,
        path_params=("name",)),
    _Op("delete", "/voices/{name}", "Remove a voice", None, {"200": _json(s.VoiceRemoved, "Removed")}, (400, 404),
        path_params=("name",)),
    _Op("post", "/add_prompt", "Legacy: add a prompt voice", AddPromptBody,
        {"200": _json(s.AddPromptResponse, "Added")}, _VOICE_ERRORS),
    _Op("post", "/remove_prompt", "Legacy: remove a voice", RemovePromptBody,
        {"200": _json(s.RemovePromptResponse, "Removed")}, (400, 404, 413, 415)),
    _Op("post", "/encode_latents", "Encode prompt audio into reusable latents", EncodeBody,
        {"200": _json(s.LatentsResponse, "The latents")}, (400, 413, 415)),
    _Op("get", "/openapi.json", "This document", None,
        {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}),
    _Op("get", "/docs", "API documentation page", None,
        {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}}),
)  # fmt: skip


def _error_ref(openai: bool) -> dict[str, Any]:
    model = s.OpenAIErrorResponse if openai else s.ErrorResponse
    return {"application/json": {"schema": {"$ref": _REF.format(model=model.__name__)}}}


def _operation(op: _Op) -> dict[str, Any]:
    responses: dict[str, Any] = dict(op.ok)
    for status in op.errors:
        responses.setdefault(str(status), {"description": f"Error {status}", "content": _error_ref(op.openai)})
    responses["default"] = {
        "description": "Error (401/403 auth, 408 body timeout, 503 over capacity or shutting down, 500)",
        "content": _error_ref(op.openai),
    }
    out: dict[str, Any] = {"summary": op.summary, "operationId": f"{op.method}_{op.path.strip('/').replace('/', '_')}"}
    out["operationId"] = out["operationId"].replace("{", "").replace("}", "").replace(".", "_") or op.method
    if op.path_params:
        out["parameters"] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in op.path_params
        ]
    if op.body is not None:
        schema = {"$ref": _REF.format(model=op.body.__name__)}
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    out["responses"] = responses
    return out


def _components(models: list[type[BaseModel]]) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=_REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def build_openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the whole API."""
    paths: dict[str, dict[str, Any]] = {}
    for op in _OPS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    models = [op.body for op in _OPS if op.body is not None]
    models += [
        s.ErrorResponse, s.OpenAIErrorResponse, s.HealthResponse, s.StatusResponse, s.ReadyResponse,
        s.QueueResponse, s.CancelResponse, s.InfoResponse, s.VoiceList, s.VoiceDescription, s.VoiceRemoved,
        s.AddPromptResponse, s.RemovePromptResponse, s.LatentsResponse,
    ]  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {"title": "VoxCPM TTS server", "version": "0.1.0"},
        "components": {
            "schemas": _components(list(dict.fromkeys(models))),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
        "paths": paths,
    }


_DOCS = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>VoxCPM TTS server API</title>
<style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}
code,pre{background:#f4f4f4;padding:.1rem .3rem}pre{padding:.6rem;overflow:auto}h2{margin-top:2rem}</style>
</head><body><h1>VoxCPM TTS server API</h1>
<p>The machine-readable description is <a href="openapi.json">/openapi.json</a> (OpenAPI 3.1).</p>
<div id="ops">Loading&hellip;</div>
<script>
fetch("openapi.json").then(r => r.json()).then(doc => {
  const out = [];
  const esc = t => String(t).replace(/[&<>]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;"}[c]));
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      out.push(`<h2><code>${method.toUpperCase()} ${esc(path)}</code></h2><p>${esc(op.summary)}</p>`);
      const ref = op.requestBody && op.requestBody.content["application/json"].schema.$ref;
      if (ref) {
        const schema = doc.components.schemas[ref.split("/").pop()];
        out.push("<pre>" + esc(JSON.stringify(schema.properties, null, 2)) + "</pre>");
      }
      out.push("<p>Responses: " + Object.keys(op.responses).map(esc).join(", ") + "</p>");
    }
  }
  document.getElementById("ops").innerHTML = out.join("\\n");
});
</script></body></html>
"""


async def openapi_json(request: Request) -> Response:
    """The OpenAPI document (built once per app)."""
    doc = getattr(request.app.state, "openapi", None)
    if doc is None:
        doc = request.app.state.openapi = build_openapi()
    return JSONResponse(doc)


async def docs(request: Request) -> Response:
    """The documentation page."""
    return HTMLResponse(_DOCS)


def openapi_routes() -> list[Route]:
    """The routes of this module."""
    return [Route("/openapi.json", openapi_json, methods=["GET"]), Route("/docs", docs, methods=["GET"])]
