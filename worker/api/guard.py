"""The session API's front door, before FastAPI reads anything: the key, then a bounded body.

FastAPI parses a request's body before its dependencies run, so a key checked in a dependency
came after reading and parsing whatever was sent (a 50 MB body cost 100 MB before its 401). Here,
a request that needs a key and has no known one is answered 401 with its body unread; failed
keys are rate limited per client address; bodies are capped (`MAX_BODY_BYTES`, 413) and their
JSON nesting bounded (400) before the application sees them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from worker.api.auth import ApiKeys, RateLimiter
from worker.api.page import SDK_FILE
from worker.untrusted import MAX_DEPTH, depth

logger = logging.getLogger("worker.api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 8 * 1024
"""The largest request: a session request is at most ~4.5 KB (4 KB of context)."""
PUBLIC_PATHS = frozenset(
    {
        "/healthz",
        "/openapi.json",
        "/docs",
        "/docs/oauth2-redirect",
        # the call page and its demo mode (`page.py`), which has its own limits
        "/",
        f"/{SDK_FILE}",
        "/demo/agents",
        "/demo/sessions",
    }
)


class RequestGuard:
    """ASGI middleware in front of the session API."""

    def __init__(
        self, app: ASGIApp, keys: ApiKeys, *, failures_per_minute: int, body_timeout: float
    ) -> None:
        self.app = app
        self._keys = keys
        self._failures = RateLimiter(failures_per_minute)
        self._body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._unauthorized(scope, headers)
        body = b""
        if refusal is None:
            try:
                body, refusal = await asyncio.wait_for(
                    _bounded_body(scope, headers, receive), self._body_timeout
                )
            except TimeoutError:
                refusal = 408, f"the request body took over {self._body_timeout:g} s"
        if refusal is not None:
            if refusal[0]:
                await _reply(send, *refusal)
            return
        await self.app(scope, _replay(body, receive), send)

    def _unauthorized(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        """The 401 or 429 for a request that needs a key and has no known one."""
        if scope["method"] == "OPTIONS" or scope["path"] in PUBLIC_PATHS:
            return None
        presented = _presented(headers)
        if self._keys.identify(presented) is not None:
            return None
        client = scope["client"][0] if scope.get("client") else "unknown"
        if wait := self._failures.allow(client):
            return 429, f"too many failed keys: retry in {wait:.1f} s"
        if not presented:
            return 401, "missing API key: send X-API-Key or Authorization: Bearer"
        logger.warning("rejected an unknown API key from %s", client)
        return 401, "unknown API key"


async def _bounded_body(
    scope: Scope, headers: dict[str, str], receive: Receive
) -> tuple[bytes, tuple[int, str] | None]:
    """The whole body, or why it is refused (status 0: the client went away)."""
    too_big = 413, f"request body over {MAX_BODY_BYTES} bytes"
    declared = headers.get("content-length", "")
    if declared and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        return b"", too_big
    body = b""
    more = scope["method"] in ("POST", "PUT", "PATCH", "DELETE")
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", (0, "")
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > MAX_BODY_BYTES:
            return b"", too_big
    if body and (levels := depth(body.decode("utf-8", "replace"))) > MAX_DEPTH:
        return b"", (400, f"invalid request: JSON nested {levels} levels deep")
    return body, None


def _presented(headers: dict[str, str]) -> str:
    if key := headers.get("x-api-key"):
        return key
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body already read, then the connection's own messages (its disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _reply(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class HeaderDeadline(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request's headers.

    uvicorn's own keep-alive timer restarts on every byte, so a client trickling a byte every few
    seconds held its connection forever (180 such sockets were held 80 s). This deadline starts
    when the connection opens or the previous response ends, and does not move until the
    request's headers are complete; the body has the guard's `body_timeout`.
    """

    header_timeout = 10.0
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and not self.cycle.response_complete and self._deadline:
            self._deadline.cancel()  # the headers are in: a request is being served
            self._deadline = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _expired(self) -> None:
        self._deadline = None
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            logger.warning(
                "closed a connection from %s: no request within %gs",
                self.client and self.client[0],
                self.header_timeout,
            )
            self.transport.close()
