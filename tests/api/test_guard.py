"""The session API under hostile requests: the key before the body, bounded bodies."""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from typing import Any

import httpx
import pytest

from tests.api.conftest import API_KEY, CONFIG, ClientFactory, LiveKit, auth, settings_for
from worker.api.app import create_app
from worker.api.auth import ApiKeys
from worker.api.sessions import SessionService
from worker.config import AgentRegistry

pytestmark = pytest.mark.timeout(30)


async def test_a_body_without_a_known_key_is_never_read(
    livekit: LiveKit, registry: AgentRegistry
) -> None:
    """Was: a 50 MB body read and parsed before the 401 (RSS 148 -> 252 MB)."""
    service = SessionService(registry, settings_for(livekit.url), "k", "s")
    app = create_app(service, ApiKeys([API_KEY]), 10)
    sent: list[MutableMapping[str, Any]] = []
    read: list[int] = []

    async def receive() -> dict[str, Any]:
        read.append(1)
        return {"type": "http.request", "body": b"[" * 1_000_000, "more_body": True}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    for key in (b"", b"wrong-key-0123456789"):
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/voice-sessions",
            "headers": [(b"content-length", b"50000000"), (b"x-api-key", key)],
            "client": ("203.0.113.9", 1234),
            "query_string": b"",
        }
        await app(scope, receive, send)
        assert sent[-2]["status"] == 401
    assert read == [], "the body was not read"
    await service.aclose()


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_body_over_8_kb_is_413(client: httpx.AsyncClient, chunked: bool) -> None:
    body = json.dumps({"agent_id": "5b710eca", "context": {"x": "y" * 10_000}}).encode()

    async def stream() -> Any:  # no Content-Length: the limit counts what arrives
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    response = await client.post(
        "/v1/voice-sessions",
        content=stream() if chunked else body,
        headers={**auth(), "content-type": "application/json"},
    )
    assert response.status_code == 413
    assert "8192 bytes" in response.json()["detail"]


async def test_deep_json_is_400_before_parsing(client: httpx.AsyncClient) -> None:
    deep = '{"agent_id": "5b710eca", "context": {"a": ' + "[" * 2000 + "]" * 2000 + "}}"
    response = await client.post(
        "/v1/voice-sessions", content=deep, headers={**auth(), "content-type": "application/json"}
    )
    assert response.status_code == 400
    assert "nested 2002 levels deep" in response.json()["detail"]


async def test_wrong_keys_are_rate_limited_per_client_address(make_client: ClientFactory) -> None:
    async with make_client(failed_auth_limit=5) as client:
        statuses = [
            (await client.get("/v1/agents", headers=auth("wrong-key-0123456789"))).status_code
            for _ in range(8)
        ]
        assert statuses == [401] * 5 + [429] * 3
        assert (await client.get("/v1/agents", headers=auth())).status_code == 200, (
            "a known key is never held back by others' failures"
        )


async def test_health_checks_do_not_call_livekit_each_time(
    livekit: LiveKit, registry: AgentRegistry
) -> None:
    """Was: every unauthenticated GET /healthz called LiveKit."""
    service = SessionService(registry, settings_for(livekit.url), CONFIG.api_key, CONFIG.api_secret)
    asked: list[object] = []
    real = service.lkapi.room.list_rooms

    async def counted(request: Any) -> Any:
        asked.append(request)
        return await real(request)

    service.lkapi.room.list_rooms = counted  # type: ignore[method-assign,assignment]
    app = create_app(service, ApiKeys([API_KEY]), 10)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        statuses = [(await c.get("/healthz")).status_code for _ in range(50)]
    await service.aclose()
    assert statuses == [200] * 50
    assert len(asked) == 1
