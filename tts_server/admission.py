"""Level 1: the connection cap and the auth check, as a pure ASGI middleware.

A work request takes a place when it arrives and gives it back when the app has returned:
response complete, client gone, or body iterator cancelled (the ``finally`` runs in every case,
cancellation included). Taking a place is one synchronous test-and-increment on the event loop,
so concurrent arrivals can never pass the cap together. Over the cap, while draining or while
the engine is down, the answer is an immediate 503 with ``Retry-After`` that never reaches the
routes or the engine. Probes (``/health``, ``/status``, ``/ready``, ``/metrics``, ``/info``, the
docs), ``/queue`` and ``/cancel`` are never capped: a load balancer must see a full server, and a
client must be able to cancel on one.

Pure ASGI rather than ``BaseHTTPMiddleware``: the latter runs the app in a separate task and
buffers the response, which breaks streaming cancellation on disconnect.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from tts_server.auth import OPEN_PATHS, Access, check_access, required_access
from tts_server.errors import ApiError
from tts_server.lifecycle import Lifecycle
from tts_server.openai_errors import error_response_for

__all__ = ["UNCAPPED_PATHS", "Admission", "AdmissionMiddleware"]

UNCAPPED_PATHS = OPEN_PATHS | {"/queue", "/cancel"}
_DISCARD_LIMIT = 1 << 20  # bytes of a refused request's body read before answering


class Admission:
    """The cap's state, shared by the middleware and the status endpoints.

    Args:
        cap: Most work requests admitted at once.
        lifecycle: Whether the server takes work at all.
        api_key: Key for work endpoints (None: open).
        admin_key: Key for voice management (None: open).
        retry_after: Seconds for the ``Retry-After`` header of a 503.
        on_reject: Called with the reason and the path of every 503 (metrics).
    """

    def __init__(
        self,
        cap: int,
        lifecycle: Lifecycle,
        *,
        api_key: str | None = None,
        admin_key: str | None = None,
        retry_after: int = 1,
        on_reject: Callable[[str, str], None] | None = None,
    ) -> None:
        self.cap = cap
        self.lifecycle = lifecycle
        self.api_key = api_key
        self.admin_key = admin_key
        self.retry_after = retry_after
        self.on_reject = on_reject
        self.active = 0  # work requests admitted and not yet answered

    def try_enter(self) -> bool:
        """Take a place if one is free (test and increment in one step)."""
        if self.active >= self.cap:
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        """Give a place back."""
        self.active -= 1

    def unavailable(self, reason: str, path: str, message: str) -> ApiError:
        """A 503 with ``Retry-After``, counted."""
        if self.on_reject is not None:
            self.on_reject(reason, path)
        return ApiError(503, message, type="overloaded", headers={"Retry-After": str(self.retry_after)})


class AdmissionMiddleware:
    """Auth, then the lifecycle gate and the cap, in front of the routes.

    Args:
        app: The wrapped ASGI app.
        admission: The shared :class:`Admission` state.
    """

    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        adm = self.admission
        path: str = scope["path"]
        try:
            headers = dict((k.lower(), v) for k, v in scope["headers"])
            authorization = headers.get(b"authorization", b"").decode("latin-1") or None
            access = required_access(scope["method"], path)
            check_access(access, authorization, api_key=adm.api_key, admin_key=adm.admin_key)
            if access is Access.OPEN or path in UNCAPPED_PATHS:
                await self.app(scope, receive, send)
                return
            if not adm.lifecycle.accepting:
                reason = adm.lifecycle.state.value
                raise adm.unavailable(reason, path, f"not accepting requests: {adm.lifecycle.reason}")
            if not adm.try_enter():
                message = f"server at capacity ({adm.cap} concurrent requests); retry later"
                raise adm.unavailable("connection_cap", path, message)
        except ApiError as error:
            await _send_error(scope, receive, send, error)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            adm.leave()


async def _send_error(scope: Scope, receive: Receive, send: Send, error: ApiError) -> None:
    await _discard_body(receive)
    await error_response_for(scope["path"], error)(scope, receive, send)


async def _discard_body(receive: Receive, limit: int = _DISCARD_LIMIT) -> None:
    """Read (and drop) a small request body before answering without it.

    A server that closes a connection with unread request bytes in its socket makes the kernel
    send a reset, which can destroy the error response before the client reads it. The body of a
    JSON request is small; a larger one is left unread (that client may see a reset instead).
    """
    seen = 0
    while seen <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return
