"""A backend the agents' `http` tools call: Acme's order API, on an ephemeral local port.

`GET /orders/{number}` answers `{"order": {"number", "status", "arrives"}}` for the orders it
knows (404 otherwise) and `POST /tickets` opens a ticket from a JSON body. It records every
request (method, path, query, headers, body) and misbehaves on demand: the shared `Faults`
(latency, an error status, no answer, a malformed body) plus `huge` (a body far over any cap)
and `redirect` (a 302 to another host).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from tests.standins.base import StandIn

ORDERS = {"427": {"number": "427", "status": "shipped", "arrives": "Friday"}}
API_KEY_HEADER = "X-Api-Key"


class ToolServerStandIn(StandIn):
    def __init__(self, *, api_key: str) -> None:
        super().__init__(api_key=api_key)
        self.huge = False
        self.redirect = False

    @property
    def url(self) -> str:
        return self.origin

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/orders/{number}", self._order),
            web.post("/tickets", self._ticket),
        ]

    async def _order(self, request: web.Request) -> web.StreamResponse:
        self.record("request", request)
        if refused := await self._misbehave(request):
            return refused
        order = ORDERS.get(request.match_info["number"])
        if order is None:
            return web.json_response({"error": "no such order"}, status=404)
        return web.json_response({"order": order})

    async def _ticket(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.record("request", request, body)
        if refused := await self._misbehave(request):
            return refused
        return web.json_response({"ticket": "T-1001", "summary": body.get("summary", "")})

    async def _misbehave(self, request: web.Request) -> web.StreamResponse | None:
        if request.headers.get(API_KEY_HEADER) != self.api_key:
            return web.json_response({"error": "bad key"}, status=401)
        if self.faults.no_answer:
            await asyncio.sleep(3600)
        if self.faults.latency:
            await asyncio.sleep(self.faults.latency)
        if self.faults.status is not None:
            return web.json_response({"error": "fault"}, status=self.faults.status)
        if self.faults.take_malformed():
            return web.Response(text='{"order": {"status": "shi', content_type="application/json")
        if self.huge:
            return web.json_response({"order": {"notes": "x" * 2_000_000}})
        if self.redirect:
            raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")
        return None

    def requests(self) -> list[dict[str, Any]]:
        """What each request carried, for assertions (the body as JSON text when present)."""
        return [
            {"path": r.path, "query": r.query, "body": json.dumps(r.body) if r.body else None}
            for r in self.of_kind("request")
        ]
