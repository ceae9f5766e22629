"""A backend receiving the worker's call records: a real HTTP server that verifies each request
with the Standard Webhooks reference library (`standardwebhooks`, not the worker's own code),
de-duplicates by `webhook-id` as a receiver should, and can be down or failing on demand.

`fail_next` answers that many requests 503; `faults.status` answers every request so;
`faults.no_answer` never answers; stopping
it (`close`) and starting it again keeps its port, so the worker's URL stays right.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests.standins.base import StandIn

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
"""Base64 of 24 bytes, in the format's own example style."""


class WebhookReceiver(StandIn):
    def __init__(self, *, secret: str = SECRET) -> None:
        super().__init__(api_key=secret)
        self.fail_next = 0
        self.accepted: dict[str, dict[str, Any]] = {}
        """Verified records, by `webhook-id`: each once, however often it was sent."""
        self.duplicates = 0
        self.rejected = 0
        """Requests whose signature or timestamp did not verify."""

    @property
    def url(self) -> str:
        return self.origin + "/hooks/calls"

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/hooks/calls", self._receive)]

    async def _receive(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        entry = self.record("attempt", request, raw)
        if self.faults.no_answer:
            entry.outcome = "failed"
            await asyncio.sleep(3600)  # a receiver that hangs: the sender's timeout ends it
        if self.fail_next > 0:
            self.fail_next -= 1
            entry.outcome = "failed"
            return web.Response(status=503)
        if self.faults.status is not None:
            entry.outcome = "failed"
            return web.Response(status=self.faults.status)
        try:
            Webhook(self.api_key).verify(raw, dict(request.headers), json_parse=False)
        except WebhookVerificationError:
            self.rejected += 1
            entry.outcome = "rejected"
            return web.Response(status=401)
        message_id = request.headers["webhook-id"]
        entry.outcome = "completed"
        if message_id in self.accepted:
            self.duplicates += 1
        else:
            self.accepted[message_id] = json.loads(raw)
        return web.Response(status=204)

    def attempts(self) -> list[str]:
        """Each request's outcome, in order."""
        return [r.outcome for r in self.of_kind("attempt")]
