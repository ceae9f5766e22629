"""What every provider stand-in shares: a real HTTP/WebSocket server on an ephemeral local port,
an API-key check, a record of what it received, and fault knobs a test can turn mid-call."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web


@dataclass
class Faults:
    """How the stand-in misbehaves; a test may change these at any time, even mid-call."""

    latency: float = 0.0
    """Seconds added before the first answer of each request or utterance."""
    status: int | None = None
    """Refuse new requests (HTTP) or connections (WebSocket handshake) with this status."""
    drop_after: float | None = None
    """Drop the connection this many seconds into the next response or stream (once)."""
    malformed: bool = False
    """Send a message that is not valid for the protocol (once) instead of the next answer."""
    no_answer: bool = False
    """Accept requests and connections, then never answer."""

    def take_drop(self) -> float | None:
        """The pending drop delay, consumed: one drop per setting."""
        delay, self.drop_after = self.drop_after, None
        return delay

    def take_malformed(self) -> bool:
        malformed, self.malformed = self.malformed, False
        return malformed


@dataclass
class Received:
    """One request or connection as the stand-in saw it, for assertions."""

    kind: str
    """`connect`, `request`, `message`..., per stand-in."""
    at: float = field(default_factory=time.monotonic)
    path: str = ""
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    outcome: str = "open"
    """How it ended: `completed`, `cancelled` (the client went away first), `rejected`,
    `dropped` (a fault), `open` (still going)."""


class StandIn:
    """Base of the stand-ins: subclasses add routes in `routes()` and use `self.record`."""

    def __init__(self, *, api_key: str) -> None:
        self.api_key = api_key
        self.faults = Faults()
        self.received: list[Received] = []
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        """What the plugin takes as its `base_url`."""
        raise NotImplementedError

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    async def start(self) -> Self:
        app = web.Application()
        app.add_routes(self.routes())
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)  # a restart keeps its port
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self._port = server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def record(self, kind: str, request: web.Request, body: Any = None) -> Received:
        entry = Received(
            kind=kind,
            path=request.path,
            query=dict(request.query),
            headers=dict(request.headers),
            body=body,
        )
        self.received.append(entry)
        return entry

    def of_kind(self, kind: str) -> list[Received]:
        return [r for r in self.received if r.kind == kind]
