"""`livekit.api.LiveKitAPI` against the test server's Twirp API: rooms, participants, dispatch.

The backend half of a call (create a room, dispatch the agent, clean up) goes through these, so
they must behave as livekit-server's do, including rejecting bad tokens.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from livekit import api, rtc
from livekit.protocol import agent as proto_agent

from tests.e2e.conftest import LiveKitFixture

ROOM = "e2e-api"
CONNECT_S = 20

pytestmark = pytest.mark.timeout(90)


@asynccontextmanager
async def in_room(lk: LiveKitFixture, identity: str) -> AsyncIterator[rtc.Room]:
    room = rtc.Room()
    async with asyncio.timeout(CONNECT_S):
        await room.connect(lk.url, lk.token(identity, ROOM))
    try:
        yield room
    finally:
        await room.disconnect()


async def room_names(lkapi: api.LiveKitAPI, *names: str) -> list[str]:
    listed = await lkapi.room.list_rooms(api.ListRoomsRequest(names=list(names)))
    return sorted(room.name for room in listed.rooms)


async def test_rooms_are_created_listed_and_deleted(livekit_server: LiveKitFixture) -> None:
    lkapi = livekit_server.api()
    created = await lkapi.room.create_room(
        api.CreateRoomRequest(name=ROOM, metadata="call 42", empty_timeout=30)
    )
    assert created.sid.startswith("RM_")
    assert (created.name, created.metadata, created.empty_timeout) == (ROOM, "call 42", 30)
    again = await lkapi.room.create_room(api.CreateRoomRequest(name=ROOM))
    assert again.sid == created.sid  # as livekit-server: the existing room

    await lkapi.room.create_room(api.CreateRoomRequest(name="other"))
    assert await room_names(lkapi) == [ROOM, "other"]
    assert await room_names(lkapi, ROOM) == [ROOM]

    await lkapi.room.delete_room(api.DeleteRoomRequest(room=ROOM))
    assert await room_names(lkapi) == ["other"]
    with pytest.raises(api.TwirpError) as missing:
        await lkapi.room.delete_room(api.DeleteRoomRequest(room=ROOM))
    assert (missing.value.code, missing.value.status) == ("not_found", 404)


async def test_participants_are_listed_and_removed(livekit_server: LiveKitFixture) -> None:
    lkapi = livekit_server.api()
    async with in_room(livekit_server, "alice"), in_room(livekit_server, "bob") as bob:
        listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=ROOM))
        assert sorted(p.identity for p in listed.participants) == ["alice", "bob"]

        removed: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        @bob.on("disconnected")
        def on_disconnected(reason: int) -> None:
            if not removed.done():
                removed.set_result(reason)

        await lkapi.room.remove_participant(api.RoomParticipantIdentity(room=ROOM, identity="bob"))
        reason = await asyncio.wait_for(removed, CONNECT_S)
        assert reason == rtc.DisconnectReason.PARTICIPANT_REMOVED

        listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=ROOM))
        assert [p.identity for p in listed.participants] == ["alice"]
        with pytest.raises(api.TwirpError) as missing:
            await lkapi.room.remove_participant(
                api.RoomParticipantIdentity(room=ROOM, identity="bob")
            )
        assert missing.value.code == "not_found"


async def test_dispatches_are_created_listed_and_deleted(livekit_server: LiveKitFixture) -> None:
    lkapi = livekit_server.api()
    dispatch = await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="nobody-home", room=ROOM, metadata="{}")
    )
    assert dispatch.id.startswith("AD_")
    assert (dispatch.agent_name, dispatch.room, dispatch.metadata) == ("nobody-home", ROOM, "{}")
    [job] = dispatch.state.jobs
    assert job.state.status == proto_agent.JS_PENDING  # no worker with that name
    assert await room_names(lkapi) == [ROOM]  # created for the dispatch

    [listed] = await lkapi.agent_dispatch.list_dispatch(ROOM)
    assert listed.id == dispatch.id
    got = await lkapi.agent_dispatch.get_dispatch(dispatch.id, ROOM)
    assert got is not None
    assert got.id == dispatch.id

    deleted = await lkapi.agent_dispatch.delete_dispatch(dispatch.id, ROOM)
    assert deleted.id == dispatch.id
    assert [j.state.status for j in deleted.state.jobs] == [proto_agent.JS_CANCELLED]
    assert await lkapi.agent_dispatch.list_dispatch(ROOM) == []
    with pytest.raises(api.TwirpError) as missing:
        await lkapi.agent_dispatch.delete_dispatch(dispatch.id, ROOM)
    assert missing.value.code == "not_found"


async def test_bad_tokens_are_rejected(livekit_server: LiveKitFixture) -> None:
    lk = livekit_server
    cases: list[tuple[api.LiveKitAPI, str, int]] = [
        (api.LiveKitAPI(lk.server.http_url, lk.api_key, "x" * 40), "unauthenticated", 401),
        (api.LiveKitAPI(lk.server.http_url, "nokey", lk.api_secret), "unauthenticated", 401),
        (api.LiveKitAPI(lk.server.http_url, token=lk.token("u", ROOM)), "permission_denied", 403),
    ]
    for client, code, status in cases:
        try:
            with pytest.raises(api.TwirpError) as rejected:
                await client.room.list_rooms(api.ListRoomsRequest())
            assert (rejected.value.code, rejected.value.status) == (code, status)
        finally:
            await client.aclose()

    other_room_admin = lk.token("admin", "elsewhere", room_admin=True)
    client = api.LiveKitAPI(lk.server.http_url, token=other_room_admin)
    try:
        with pytest.raises(api.TwirpError) as rejected:
            await client.room.list_participants(api.ListParticipantsRequest(room=ROOM))
        assert rejected.value.code == "permission_denied"
    finally:
        await client.aclose()


async def test_json_requests_get_twirp_json(livekit_server: LiveKitFixture) -> None:
    """Twirp's other encoding, and its error format, as seen by a plain HTTP client."""
    lk = livekit_server
    token = api.AccessToken(lk.api_key, lk.api_secret).with_grants(
        api.VideoGrants(room_create=True)
    )
    url = f"{lk.server.http_url}/twirp/livekit.RoomService"
    auth = {"Authorization": f"Bearer {token.to_jwt()}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with http.post(f"{url}/CreateRoom", json={"name": ROOM}, headers=auth) as ok:
            assert ok.status == 200
            assert ok.content_type == "application/json"
            body = await ok.json()
            assert body["name"] == ROOM
            assert body["sid"].startswith("RM_")
        async with http.post(f"{url}/CreateRoom", json={"name": ROOM}) as anonymous:
            assert anonymous.status == 401
            assert (await anonymous.json())["code"] == "unauthenticated"
        async with http.post(f"{url}/Explode", json={}, headers=auth) as unknown:
            assert unknown.status == 404
            assert (await unknown.json())["code"] == "bad_route"
