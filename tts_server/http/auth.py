"""Who may call what: open probes, API-key work endpoints, admin-key voice management.

- Open (no key ever): ``/health``, ``/status``, ``/ready``, ``/metrics``, ``/info``, ``/openapi.json``, ``/docs``,
  and the web playground's static page (``/``, ``/playground``, ``/playground/...``: the key is typed into it).
- Voice management (``POST``/``PUT``/``DELETE`` on ``/voices...``, ``/add_prompt``, ``/remove_prompt``)
  needs the admin key; without an admin key configured, the API key guards it.
- Everything else needs the API key when one is configured (the admin key works there too).

Keys travel as ``Authorization: Bearer <key>`` (what the OpenAI clients send) and are compared in
constant time. A missing or wrong key is a 401; a valid API key on an admin endpoint is a 403.

The open probes answer everyone but reveal voice names only to a key holder (:func:`has_work_access`).
With an API key configured, a request belongs to the client that made it (:func:`client_key`), and
``/queue`` and ``/cancel`` show and cancel only the caller's own requests; the admin key (when one
is configured) sees and cancels every request (:func:`request_owner`).
"""

from __future__ import annotations

import enum
import hashlib
import hmac

from tts_server.errors import ApiError

__all__ = [
    "OPEN_PATHS",
    "Access",
    "check_access",
    "client_key",
    "has_work_access",
    "request_owner",
    "required_access",
]

OPEN_PATHS = frozenset(
    {"/health", "/status", "/ready", "/metrics", "/info", "/openapi.json", "/docs", "/", "/playground"}
)
_OPEN_PREFIXES = ("/playground/",)  # the playground's static files (routes/playground.py); it calls the API with a key
_ADMIN_PREFIXES = ("/voices",)
_ADMIN_PATHS = frozenset({"/add_prompt", "/remove_prompt"})


class Access(enum.Enum):
    """What a request needs."""

    OPEN = "open"
    USER = "user"
    ADMIN = "admin"


def required_access(method: str, path: str) -> Access:
    """The access level of an endpoint."""
    if path in OPEN_PATHS or path.startswith(_OPEN_PREFIXES):
        return Access.OPEN
    if path in _ADMIN_PATHS:
        return Access.ADMIN
    if path.startswith(_ADMIN_PREFIXES) and method not in ("GET", "HEAD"):
        return Access.ADMIN
    return Access.USER


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _matches(token: str | None, key: str | None) -> bool:
    return token is not None and key is not None and hmac.compare_digest(token.encode(), key.encode())


def check_access(access: Access, authorization: str | None, *, api_key: str | None, admin_key: str | None) -> None:
    """Raise unless the request's credentials allow ``access``.

    Args:
        access: What the endpoint needs.
        authorization: The request's ``Authorization`` header.
        api_key: The configured API key (None: work endpoints are open).
        admin_key: The key voice management needs (None: open).

    Raises:
        ApiError: 401 for a missing or wrong key, 403 for an API key on an admin endpoint.
    """
    needed = admin_key if access is Access.ADMIN else api_key
    if access is Access.OPEN or needed is None:
        return
    token = bearer_token(authorization)
    if _matches(token, needed) or _matches(token, admin_key):
        return
    challenge = {"WWW-Authenticate": "Bearer"}
    if token is None:
        raise ApiError(
            401, "missing API key: send 'Authorization: Bearer <key>'", type="unauthorized", headers=challenge
        )
    if access is Access.ADMIN and _matches(token, api_key):
        raise ApiError(403, "voice management needs the admin key", type="forbidden")
    raise ApiError(401, "invalid API key", type="unauthorized", headers=challenge)


def client_key(client_id_header: str | None, authorization: str | None) -> str:
    """The fair queue's client id: ``X-Client-Id``, else a digest of the bearer key, else ``""``.

    The key itself is never kept: only a short digest, so it cannot leak through logs or state.
    """
    if client_id_header:
        return client_id_header.strip()[:128]
    token = bearer_token(authorization)
    if token is not None:
        return "key:" + hashlib.sha256(token.encode()).hexdigest()[:16]
    return ""


def has_work_access(authorization: str | None, *, api_key: str | None, admin_key: str | None) -> bool:
    """Whether the request may use the work endpoints: no API key configured, or it carries the API or admin key.

    The open probes use it to decide whether to list voice names (what ``GET /voices`` would show).
    """
    if api_key is None:
        return True
    token = bearer_token(authorization)
    return _matches(token, api_key) or _matches(token, admin_key)


def request_owner(
    client_id_header: str | None, authorization: str | None, *, api_key: str | None, admin_key: str | None
) -> str | None:
    """Whose requests the caller may list (``/queue``) and cancel (``/cancel``); None means everyone's.

    Without an API key every caller sees every request (the server is open anyway). With one, the
    caller owns the requests registered under its :func:`client_key`, the key its own requests were
    made with; the admin key (``admin_key``: the configured admin key, not the API key standing in
    for it) sees all of them.

    ``X-Client-Id`` is taken on trust, as the fair queue does: a deployment that hands one API key to
    several tenants must have its proxy set that header per tenant.
    """
    if api_key is None or _matches(bearer_token(authorization), admin_key):
        return None
    return client_key(client_id_header, authorization)
