"""Level 1: the connection cap and the auth check, as a pure ASGI middleware.

A work request takes a place when it arrives and gives it back when the app has returned:
response complete, client gone, or body iterator cancelled (the ``finally`` runs in every case,
cancellation included). Taking a place is one synchronous test-and-increment on the event loop,
so concurrent arrivals can never pass the cap together. Over the cap, while draining or while
the engine is down, the answer is an immediate 503 with ``Retry-After`` that never reaches the
routes or the engine. Probes (``/health``, ``/status``, ``/ready``, ``/metrics``, ``/info``, the
docs), ``/queue`` and ``/cancel`` are never capped: a load balancer must see a full server, and a
client must be able to cancel on one.

Every request's body must have arrived within ``body_timeout`` seconds of the request (else 408
and the connection closes), and :meth:`Admission.cut` (the end of the shutdown grace) ends every
wait for a body at once: a client that sends headers and then nothing, or a byte now and then,
cannot keep its place. A client that goes away during its upload is an ordinary event, logged at
INFO, not an error. (A client that stops *reading* is cut by :mod:`tts_server.http.transport`.)

Pure ASGI rather than ``BaseHTTPMiddleware``: the latter runs the app in a separate task and
buffers the response, which breaks streaming cancellation on disconnect.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import orjson
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tts_server.errors import ApiError
from tts_server.http.auth import OPEN_PATHS, Access, check_access, required_access
from tts_server.http.bodies import discard_body
from tts_server.jobs.timeline import TIMELINE_KEY, Timeline
from tts_server.lifecycle import Lifecycle
from tts_server.openai_errors import error_response_for

__all__ = ["UNCAPPED_PATHS", "Admission", "AdmissionMiddleware"]

log = logging.getLogger(__name__)

UNCAPPED_PATHS = OPEN_PATHS | {"/queue", "/cancel"}


class Admission:
    """The cap's state, shared by the middleware and the status endpoints.

    Args:
        cap: Most work requests admitted at once.
        lifecycle: Whether the server takes work at all.
        api_key: Key for work endpoints (None: open).
        admin_key: Key for voice management (None: open).
        retry_after: Seconds for the ``Retry-After`` header of a 503.
        body_timeout: Seconds from a request's arrival by which its body must be complete.
        on_reject: Called with the reason and the path of every 503 (metrics).
        on_cut: Called with the reason (``body_timeout``, ``shutdown``) of every request whose body
            wait was ended by the server (metrics).
    """

    def __init__(
        self,
        cap: int,
        lifecycle: Lifecycle,
        *,
        api_key: str | None = None,
        admin_key: str | None = None,
        retry_after: int = 1,
        body_timeout: float = 30.0,
        on_reject: Callable[[str, str], None] | None = None,
        on_cut: Callable[[str], None] | None = None,
    ) -> None:
        self.cap = cap
        self.lifecycle = lifecycle
        self.api_key = api_key
        self.admin_key = admin_key
        self.retry_after = retry_after
        self.body_timeout = body_timeout
        self.on_reject = on_reject
        self.on_cut = on_cut
        self.active = 0  # work requests admitted and not yet answered
        self.is_cut = False  # set by cut(): no wait for a body starts or goes on
        self._body_waits: set[asyncio.Timeout] = set()  # the deadline of every wait for a body now

    def try_enter(self) -> bool:
        """Take a place if one is free (test and increment in one step)."""
        if self.active >= self.cap:
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        """Give a place back."""
        self.active -= 1

    def cut(self) -> None:
        """End every wait for a request body now (the shutdown grace is over). On the serving loop."""
        self.is_cut = True
        if self._body_waits:
            now = asyncio.get_running_loop().time()
            for timeout in self._body_waits:
                if not timeout.expired():  # an expired one is already ending its wait
                    timeout.reschedule(now)

    def _counted_cut(self, reason: str) -> None:
        if self.on_cut is not None:
            self.on_cut(reason)

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
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        adm = self.admission
        path: str = scope["path"]
        admitted = False
        timeline = Timeline(received=Timeline.now())
        try:
            access = required_access(scope["method"], path)
            check_access(access, _authorization(scope), api_key=adm.api_key, admin_key=adm.admin_key)
            if access is not Access.OPEN and path not in UNCAPPED_PATHS:
                if not adm.lifecycle.accepting:
                    reason = adm.lifecycle.state.value
                    raise adm.unavailable(reason, path, f"not accepting requests: {adm.lifecycle.reason}")
                if not adm.try_enter():
                    message = f"server at capacity ({adm.cap} concurrent requests); retry later"
                    raise adm.unavailable("connection_cap", path, message)
                admitted = True
        except ApiError as error:
            await _send_error(scope, receive, send, error)
            return
        timeline.admitted = Timeline.now()
        scope.setdefault("state", {})[TIMELINE_KEY] = timeline
        try:
            await self.app(scope, _BodyDeadline(receive, adm), send)
        except ClientDisconnect:  # gone during its upload: nobody to answer, nothing went wrong here
            log.info("%s %s: the client disconnected before its body was complete", scope["method"], path)
        finally:
            if admitted:
                adm.leave()

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A streaming session: the same key, lifecycle and cap checks, answered before the upgrade."""
        adm = self.admission
        path: str = scope["path"]
        try:
            check_access(Access.USER, _authorization(scope), api_key=adm.api_key, admin_key=adm.admin_key)
            if not adm.lifecycle.accepting:
                reason = adm.lifecycle.state.value
                raise adm.unavailable(reason, path, f"not accepting requests: {adm.lifecycle.reason}")
            if not adm.try_enter():
                raise adm.unavailable("connection_cap", path, f"server at capacity ({adm.cap} concurrent requests)")
        except ApiError as error:
            await _refuse_upgrade(scope, receive, send, error)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            adm.leave()


def _authorization(scope: Scope) -> str | None:
    """The one ``Authorization`` header (400 when there are several: which one counts would be a guess)."""
    values = [v for k, v in scope["headers"] if k.lower() == b"authorization"]
    if len(values) > 1:
        raise ApiError(400, "Authorization: the header is given more than once", field="Authorization")
    if not values:
        return None
    return values[0].decode("latin-1") or None


class _BodyDeadline:
    """``receive`` for one request: its body by the deadline, and never past :meth:`Admission.cut`.

    Once the body is complete, messages pass straight through (only ``http.disconnect`` is left).
    """

    def __init__(self, receive: Receive, admission: Admission) -> None:
        self._receive = receive
        self._admission = admission
        self._deadline = asyncio.get_running_loop().time() + admission.body_timeout
        self._complete = False

    async def __call__(self) -> Message:
        if self._complete:
            return await self._receive()
        adm = self._admission
        if adm.is_cut:
            raise self._cut_off()
        # A timeout, not a task per wait: a body already in the server's queue is taken without
        # yielding to the loop, so a request of a burst goes on to the engine before the next one.
        try:
            async with asyncio.timeout_at(self._deadline) as timeout:
                adm._body_waits.add(timeout)
                try:
                    message = await self._receive()
                finally:
                    adm._body_waits.discard(timeout)
        except TimeoutError:
            if adm.is_cut:
                raise self._cut_off() from None
            adm._counted_cut("body_timeout")
            raise ApiError(
                408,
                f"request body: not complete {adm.body_timeout:g} s after the request began (--body-timeout)",
                type="timeout",
                headers={"Connection": "close"},
            ) from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            self._complete = True
        return message

    def _cut_off(self) -> ApiError:
        self._admission._counted_cut("shutdown")
        return ApiError(
            503,
            "request body: the server is shutting down",
            type="overloaded",
            headers={"Retry-After": str(self._admission.retry_after), "Connection": "close"},
        )


async def _refuse_upgrade(scope: Scope, receive: Receive, send: Send, error: ApiError) -> None:
    """Refuse a WebSocket upgrade with the HTTP answer (status, headers, JSON body) a request would get.

    Servers without the ASGI ``websocket.http.response`` extension can only close: with 1013 (try
    again later) for a 503, else 1008 (policy).
    """
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1013 if error.status == 503 else 1008})
        return
    body = orjson.dumps(error.body())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()]
    await send({"type": "websocket.http.response.start", "status": error.status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})


async def _send_error(scope: Scope, receive: Receive, send: Send, error: ApiError) -> None:
    await discard_body(receive)
    await error_response_for(scope["path"], error)(scope, receive, send)
