"""The session API's front door, before FastAPI reads anything: the key, then a bounded body.

FastAPI parses a request's body before its dependencies run, so a key checked in a dependency
came after reading and parsing whatever was sent (a 50 MB body cost 100 MB before its 401). Here,
a request that needs a key and has no known one is answered 401 with its body unread; failed
keys are rate limited per client address; bodies are capped (`MAX_BODY_BYTES`, 413) and their
JSON nesting bounded (400) before the application sees them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .api_auth import ApiKeys, RateLimiter
from .untrusted import MAX_DEPTH, depth

logger = logging.getLogger("worker.api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 8 * 1024
"""The largest request: a session request is at most ~4.5 KB (4 KB of context)."""
PUBLIC_PATHS = frozenset({"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect"})


class RequestGuard:
    """ASGI middleware in front of the session API."""

    def __init__(self, app: ASGIApp, keys: ApiKeys, *, failures_per_minute: int) -> None:
        self.app = app
        self._keys = keys
        self._failures = RateLimiter(failures_per_minute)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._unauthorized(scope, headers)
        body = b""
        if refusal is None:
            body, refusal = await _bounded_body(scope, headers, receive)
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
