"""POST /v1/voice-sessions and its neighbours, against the test server's real Twirp API."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import httpx
import pytest
from livekit import api

from tests.api.conftest import (
    API_KEY,
    CONFIG,
    OTHER_KEY,
    SUPPORT_ID,
    ClientFactory,
    HandWorker,
    LiveKit,
    auth,
    hand_worker,
)
from worker.dispatch import MAX_DURATION_KEY, RECORDING_KEY
from worker.routing import parse_room

pytestmark = pytest.mark.timeout(30)


async def test_a_session_is_a_room_a_dispatch_with_the_context_and_a_caller_token(
    livekit: LiveKit, worker: HandWorker, client: httpx.AsyncClient
) -> None:
    body = {"agent_id": "5b710eca", "user_id": "alice", "context": {"customer_name": "Sam"}}
    before = time.time()
    response = await client.post("/v1/voice-sessions", json=body, headers=auth())
    assert response.status_code == 201, response.text
    session = response.json()

    room = parse_room(session["room_name"])
    assert (room.agent_id, room.user_id) == (SUPPORT_ID, "alice")
    assert int(before * 1000) <= room.timestamp_ms <= time.time() * 1000
    created = livekit.server.rooms[session["room_name"]]
    assert session["session_id"] == created.sid
    assert (created.empty_timeout, created.max_participants) == (120, 3)
    assert session["livekit_url"] == "wss://livekit.example.com"
    assert (session["agent_id"], session["agent_name"]) == (SUPPORT_ID, "Ava (Acme support)")

    [dispatch] = livekit.workers.dispatches.values()
    assert (dispatch.room, dispatch.agent_name) == (session["room_name"], "voice-agent")
    assert json.loads(dispatch.metadata) == {"customer_name": "Sam"}
    [job] = worker.jobs  # the worker had taken it when the API answered
    assert job.room.name == session["room_name"]

    claims = api.TokenVerifier(CONFIG.api_key, CONFIG.api_secret).verify(session["token"])
    assert claims.identity == "alice"
    grants = claims.video
    assert grants is not None
    assert grants.room == session["room_name"]
    assert (grants.room_join, grants.can_subscribe) == (True, True)
    assert (grants.can_publish, grants.can_publish_sources, grants.can_publish_data) == (
        True,
        ["microphone"],
        True,
    )
    assert not any([grants.room_admin, grants.room_create, grants.room_list, grants.agent])
    expires = datetime.fromisoformat(session["expires_at"])
    assert abs(expires.timestamp() - (time.time() + 600)) < 5
    assert expires.utcoffset() == UTC.utcoffset(None)

    # the token is no key to the server APIs: no other room can be made, listed or deleted
    async with api.LiveKitAPI(livekit.url, token=session["token"]) as with_token:
        for request in (
            with_token.room.create_room(api.CreateRoomRequest(name="agent_x_alice_1")),
            with_token.room.list_rooms(api.ListRoomsRequest()),
            with_token.room.delete_room(api.DeleteRoomRequest(room=session["room_name"])),
        ):
            with pytest.raises(api.ServerError):
                await request
    assert list(livekit.server.rooms) == [session["room_name"]]


async def test_a_missing_user_id_is_generated_and_max_duration_travels_in_the_metadata(
    livekit: LiveKit, worker: HandWorker, client: httpx.AsyncClient
) -> None:
    body = {"agent_id": "hotel-concierge", "max_duration": 60}
    response = await client.post("/v1/voice-sessions", json=body, headers=auth())
    assert response.status_code == 201, response.text
    room = parse_room(response.json()["room_name"])
    assert room.agent_id == "hotel-concierge"
    assert room.user_id.startswith("user-")
    claims = api.TokenVerifier(CONFIG.api_key, CONFIG.api_secret).verify(response.json()["token"])
    assert claims.identity == room.user_id
    [dispatch] = livekit.workers.dispatches.values()
    assert json.loads(dispatch.metadata) == {MAX_DURATION_KEY: 60}


async def test_recording_travels_in_the_metadata_where_the_agent_allows_it(
    livekit: LiveKit, worker: HandWorker, client: httpx.AsyncClient
) -> None:
    body = {"agent_id": "5b710eca", "recording": True, "context": {"plan": "pro"}}
    response = await client.post("/v1/voice-sessions", json=body, headers=auth())
    assert response.status_code == 201, response.text
    [dispatch] = livekit.workers.dispatches.values()
    assert json.loads(dispatch.metadata) == {"plan": "pro", RECORDING_KEY: True}


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"agent_id": "5b710eca", "user_id": "al ice"}, "user_id"),
        ({"agent_id": "5b710eca", "user_id": ""}, "user_id"),
        ({"agent_id": "5b_710eca"}, "agent_id"),
        ({"agent_id": "5b710eca", "context": ["a"]}, "context"),
        ({"agent_id": "5b710eca", "context": {"x": "y" * 5000}}, "4096"),
        ({"agent_id": "5b710eca", "context": {MAX_DURATION_KEY: 5}}, "reserved"),
        ({"agent_id": "5b710eca", "context": {RECORDING_KEY: True}}, "reserved"),
        ({"agent_id": "5b710eca", "recording": "yes"}, "recording"),
        ({"agent_id": "hotel-concierge", "recording": True}, "does not allow choosing"),
        ({"agent_id": "hotel-concierge", "recording": False}, "does not allow choosing"),
        ({"agent_id": "5b710eca", "max_duration": 0}, "max_duration"),
        ({"agent_id": "5b710eca", "max_duration": 1201}, "limit of 1200 s"),
        ({"agent_id": "5b710eca", "max_duration": 99999}, "max_duration"),
        ({"agent_id": "5b710eca", "room": "x"}, "room"),
        ({}, "agent_id"),
    ],
)
async def test_an_invalid_body_is_a_400_saying_what(
    livekit: LiveKit, client: httpx.AsyncClient, body: dict[str, object], why: str
) -> None:
    response = await client.post("/v1/voice-sessions", json=body, headers=auth())
    assert response.status_code == 400, response.text
    assert why in response.json()["detail"]
    assert not livekit.server.rooms


async def test_a_body_that_is_not_json_is_a_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/voice-sessions",
        content=b"{not json",
        headers={**auth(), "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert set(response.json()) == {"detail"}


@pytest.mark.parametrize("agent_id", ["deadbeef", "5b71"])
async def test_an_unknown_or_too_short_agent_id_is_a_404(
    livekit: LiveKit, client: httpx.AsyncClient, agent_id: str
) -> None:
    response = await client.post("/v1/voice-sessions", json={"agent_id": agent_id}, headers=auth())
    assert response.status_code == 404
    assert agent_id in response.json()["detail"]
    assert not livekit.server.rooms


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": "wrong-key-0123456789abcdef"},
        {"Authorization": "Bearer wrong-key-0123456789abcdef"},
        {"Authorization": f"Basic {API_KEY}"},
        {"X-API-Key": API_KEY[:-1]},
    ],
    ids=["none", "wrong", "wrong-bearer", "basic", "prefix"],
)
async def test_no_key_or_a_wrong_one_is_a_401(
    livekit: LiveKit, client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    for method, path in (("POST", "/v1/voice-sessions"), ("GET", "/v1/agents")):
        response = await client.request(
            method, path, json={"agent_id": "5b710eca"}, headers=headers
        )
        assert response.status_code == 401
        assert "key" in response.json()["detail"]
    assert not livekit.server.rooms


async def test_both_key_headers_are_accepted(client: httpx.AsyncClient) -> None:
    for headers in ({"X-API-Key": API_KEY}, {"Authorization": f"Bearer {OTHER_KEY}"}):
        response = await client.get("/v1/agents", headers=headers)
        assert response.status_code == 200


async def test_each_key_has_its_own_rate_limit(make_client: ClientFactory) -> None:
    async with make_client(rate_limit=2) as client:
        statuses = [(await client.get("/v1/agents", headers=auth())).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        limited = await client.get("/v1/agents", headers=auth())
        assert "rate limit" in limited.json()["detail"]
        other = await client.get("/v1/agents", headers=auth(OTHER_KEY))
        assert other.status_code == 200


async def test_the_agents_list_shows_public_fields_only(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/agents", headers=auth())
    assert response.status_code == 200
    agents = {a["id"]: a for a in response.json()}
    assert set(agents) == {SUPPORT_ID, "hotel-concierge"}
    assert agents["hotel-concierge"] == {
        "id": "hotel-concierge",
        "name": "Leo (Harbor Hotel front desk)",
        "language": "en",
        "placeholders": ["guest_name", "part_of_day", "today"],
        "max_duration": 900,
        "recording": False,
        "recording_per_session": False,
    }


async def test_deleting_a_session_deletes_its_room(
    livekit: LiveKit, worker: HandWorker, client: httpx.AsyncClient
) -> None:
    created = await client.post("/v1/voice-sessions", json={"agent_id": "5b710eca"}, headers=auth())
    room = created.json()["room_name"]
    deleted = await client.delete(f"/v1/voice-sessions/{room}", headers=auth())
    assert deleted.status_code == 204
    assert room not in livekit.server.rooms
    again = await client.delete(f"/v1/voice-sessions/{room}", headers=auth())
    assert again.status_code == 404
    assert room in again.json()["detail"]


async def test_only_the_key_that_created_a_session_can_end_it(
    livekit: LiveKit, worker: HandWorker, client: httpx.AsyncClient
) -> None:
    created = await client.post("/v1/voice-sessions", json={"agent_id": "5b710eca"}, headers=auth())
    room = created.json()["room_name"]
    other = await client.delete(f"/v1/voice-sessions/{room}", headers=auth(OTHER_KEY))
    assert other.status_code == 404, "another key's session does not exist for this one"
    assert room in livekit.server.rooms
    assert (await client.delete(f"/v1/voice-sessions/{room}", headers=auth())).status_code == 204


async def test_a_matching_room_the_api_never_created_is_no_session(
    livekit: LiveKit, client: httpx.AsyncClient
) -> None:
    room = f"agent_{SUPPORT_ID[:8]}_mallory_1705312800000"
    await livekit.server.create_room(room)
    await livekit.server.create_room(room + "1", metadata='{"session_api_key": [[[[')
    for name in (room, room + "1"):
        response = await client.delete(f"/v1/voice-sessions/{name}", headers=auth())
        assert response.status_code == 404
        assert name in livekit.server.rooms


async def test_deleting_a_room_that_is_no_session_is_refused(
    livekit: LiveKit, client: httpx.AsyncClient
) -> None:
    await livekit.server.create_room("lobby")
    response = await client.delete("/v1/voice-sessions/lobby", headers=auth())
    assert response.status_code == 400
    assert "lobby" in livekit.server.rooms


async def test_no_worker_taking_the_call_is_a_503_and_leaves_no_room(
    livekit: LiveKit, make_client: ClientFactory
) -> None:
    async with (
        hand_worker(livekit, accept=False),
        make_client(dispatch_wait=0.5) as client,
    ):
        response = await client.post(
            "/v1/voice-sessions", json={"agent_id": "5b710eca"}, headers=auth()
        )
    assert response.status_code == 503
    assert "no agent worker accepted" in response.json()["detail"]
    assert not livekit.server.rooms


async def test_livekit_unreachable_is_a_503_and_healthz_says_so(
    make_client: ClientFactory, client: httpx.AsyncClient
) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    async with make_client(livekit_url="http://127.0.0.1:9") as unreachable:
        response = await unreachable.post(
            "/v1/voice-sessions", json={"agent_id": "5b710eca"}, headers=auth()
        )
        assert response.status_code == 503
        assert "unreachable" in response.json()["detail"]
        health = await unreachable.get("/healthz")
        assert health.status_code == 503
        assert "unreachable" in health.json()["detail"]


async def test_livekit_refusing_the_api_credentials_is_a_503(make_client: ClientFactory) -> None:
    async with make_client(api_secret="not-the-secret-0123456789abcdef-0123") as client:
        response = await client.post(
            "/v1/voice-sessions", json={"agent_id": "5b710eca"}, headers=auth()
        )
    assert response.status_code == 503
    assert "LiveKit refused" in response.json()["detail"]


async def test_cors_admits_the_configured_origins_only(make_client: ClientFactory) -> None:
    async with make_client(cors_origins=("https://app.example.com",)) as client:
        for origin, allowed in (("https://app.example.com", True), ("https://evil.example", False)):
            preflight = await client.options(
                "/v1/voice-sessions",
                headers={
                    "Origin": origin,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "x-api-key,content-type",
                },
            )
            header = preflight.headers.get("access-control-allow-origin")
            assert (header == origin) is allowed
