"""The official rtc SDK (Rust FFI) in real rooms on tests/lkserver: audio, data, presence, auth.

These check the server against the client the worker uses in production, so a protocol mistake in
the fixture shows up here rather than as a confusing agent failure.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import aiohttp
import numpy as np
import pytest
from livekit import api, rtc

from tests.e2e.conftest import LiveKitFixture
from tests.lkserver import LiveKitTestServer, Participant, Room, load_config
from tests.lkserver import server as lkserver
from tests.lkserver.netns import ADDRESS
from tests.polling import until

CONFIG = load_config()
ROOM = "e2e-room"
CONNECT_S = 20
EVENT_S = 10
TONE_HZ = 440
SAMPLE_RATE = 48000

pytestmark = pytest.mark.timeout(90)


def token(
    identity: str,
    *,
    api_key: str = CONFIG.api_key,
    api_secret: str = CONFIG.api_secret,
    ttl: timedelta = timedelta(minutes=10),
    grants: api.VideoGrants | None = None,
) -> str:
    """A join token with every part open to spoiling, for the rejection tests."""
    return (
        api.AccessToken(api_key, api_secret)
        .with_identity(identity)
        .with_ttl(ttl)
        .with_grants(
            grants or api.VideoGrants(room_join=True, room=ROOM, can_update_own_metadata=True)
        )
        .to_jwt()
    )


@asynccontextmanager
async def joined(lk: LiveKitFixture, identity: str) -> AsyncIterator[rtc.Room]:
    """`identity` connected to ROOM (allowed to set its attributes) for the block."""
    room = rtc.Room()
    async with asyncio.timeout(CONNECT_S):
        await room.connect(lk.url, lk.token(identity, ROOM, can_update_own_metadata=True))
    try:
        yield room
    finally:
        async with asyncio.timeout(EVENT_S):
            await room.disconnect()


def next_event(
    room: rtc.Room, event: Any, where: Callable[..., bool] = lambda *_: True
) -> asyncio.Future[tuple[Any, ...]]:
    """The arguments of the next `event` on `room` that satisfies `where`."""
    future: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()

    def handler(*args: Any) -> None:
        if not future.done() and where(*args):
            future.set_result(args)

    room.on(event, handler)
    future.add_done_callback(lambda _: room.off(event, handler))
    return future


async def wait(future: asyncio.Future[tuple[Any, ...]]) -> tuple[Any, ...]:
    async with asyncio.timeout(EVENT_S):
        return await future


def dominant_hz(pcm: np.ndarray[Any, np.dtype[np.int16]]) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / SAMPLE_RATE)[np.argmax(spectrum)])


async def play_tone(source: rtc.AudioSource, hz: int = TONE_HZ) -> None:
    """A continuous sine in 10 ms frames, paced by `capture_frame`."""
    samples = SAMPLE_RATE // 100
    t = 0
    while True:
        n = np.arange(t, t + samples)
        pcm = (0.3 * 32767 * np.sin(2 * np.pi * hz * n / SAMPLE_RATE)).astype(np.int16)
        await source.capture_frame(rtc.AudioFrame(pcm.tobytes(), SAMPLE_RATE, 1, samples))
        t += samples


async def receive_audio(track: rtc.Track, seconds: float) -> np.ndarray[Any, np.dtype[np.int16]]:
    """`seconds` of received audio, from 0.5 s after the first sound (jitter buffer and codec
    warm-up; the stream plays silence until the media path is up, later on a busy machine)."""
    stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
    chunks: list[np.ndarray[Any, np.dtype[np.int16]]] = []
    skip = int(0.5 * SAMPLE_RATE)
    need = int(seconds * SAMPLE_RATE)
    heard = False
    try:
        async for event in stream:
            pcm = np.frombuffer(event.frame.data, dtype=np.int16)
            heard = heard or bool(pcm.any())
            if not heard:
                continue
            if skip > 0:
                skip -= len(pcm)
                continue
            chunks.append(pcm)
            need -= len(pcm)
            if need <= 0:
                break
    finally:
        await stream.aclose()
    return np.concatenate(chunks)


async def test_audio_reaches_the_other_participant(livekit_server: LiveKitFixture) -> None:
    async with joined(livekit_server, "alice") as alice, joined(livekit_server, "bob") as bob:
        subscribed = next_event(bob, "track_subscribed")
        seen_by_publisher = next_event(alice, "local_track_subscribed")
        source = rtc.AudioSource(SAMPLE_RATE, 1)
        track = rtc.LocalAudioTrack.create_audio_track("tone", source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        tone = asyncio.create_task(play_tone(source))
        try:
            await alice.local_participant.publish_track(track, options)
            remote_track, publication, participant = await wait(subscribed)
            assert participant.identity == "alice"
            rooms = livekit_server.server.rooms
            assert publication.sid == next(iter(rooms[ROOM].participants["alice"].tracks))
            await wait(seen_by_publisher)  # the server's track_subscribed reached alice
            async with asyncio.timeout(EVENT_S):
                pcm = await receive_audio(remote_track, seconds=1.0)
        finally:
            tone.cancel()
            await source.aclose()

    rms = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))
    assert rms > 0.05 * 32767, f"received audio is too quiet (rms {rms:.0f})"
    assert abs(dominant_hz(pcm) - TONE_HZ) < 5, f"dominant frequency {dominant_hz(pcm):.1f} Hz"


async def test_a_late_joiner_hears_a_track_published_before_it_came_and_gets_data(
    livekit_server: LiveKitFixture,
) -> None:
    """Its first subscriber offer carries an audio m-line as well as the data channels."""
    lk = livekit_server
    source = rtc.AudioSource(SAMPLE_RATE, 1)
    track = rtc.LocalAudioTrack.create_audio_track("tone", source)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    tone = asyncio.create_task(play_tone(source))
    try:
        async with joined(lk, "alice") as alice:
            await alice.local_participant.publish_track(track, options)
            published = lk.server.rooms[ROOM].participants["alice"].tracks
            await until(lambda: published, EVENT_S, "alice's media to reach the server")
            bob = rtc.Room()
            subscribed = next_event(bob, "track_subscribed")
            data = next_event(bob, "data_received")
            async with asyncio.timeout(CONNECT_S):
                await bob.connect(lk.url, lk.token("bob", ROOM))
            try:
                remote_track, _, participant = await wait(subscribed)
                assert participant.identity == "alice"
                async with asyncio.timeout(EVENT_S):
                    pcm = await receive_audio(remote_track, seconds=1.0)
                await alice.local_participant.publish_data(b"hi bob", reliable=True)
                (packet,) = await wait(data)
                assert packet.data == b"hi bob"
            finally:
                await bob.disconnect()
    finally:
        tone.cancel()
        await source.aclose()
    assert abs(dominant_hz(pcm) - TONE_HZ) < 5, f"dominant frequency {dominant_hz(pcm):.1f} Hz"


async def test_reliable_data_to_everyone_and_to_one(livekit_server: LiveKitFixture) -> None:
    async with (
        joined(livekit_server, "alice") as alice,
        joined(livekit_server, "bob") as bob,
        joined(livekit_server, "carol") as carol,
    ):
        received: dict[str, list[tuple[str, bytes]]] = {"bob": [], "carol": []}
        done = {name: asyncio.Event() for name in received}
        for name, room in (("bob", bob), ("carol", carol)):

            def on_data(packet: rtc.DataPacket, name: str = name) -> None:
                assert packet.participant is not None
                received[name].append((packet.participant.identity, packet.data))
                if packet.data == b"last":
                    done[name].set()

            room.on("data_received", on_data)

        # Sent at once after the last join: carol's channel may not be open yet (buffered).
        send = alice.local_participant.publish_data
        await send(b"hello all", reliable=True, topic="chat")
        await send(b"only bob", reliable=True, destination_identities=["bob"])
        await send(b"last", reliable=True)
        async with asyncio.timeout(EVENT_S):
            await asyncio.gather(*(event.wait() for event in done.values()))

    assert received["bob"] == [("alice", b"hello all"), ("alice", b"only bob"), ("alice", b"last")]
    assert received["carol"] == [("alice", b"hello all"), ("alice", b"last")]


async def test_text_streams_and_rpc(livekit_server: LiveKitFixture) -> None:
    """What agents use on top of data packets: `lk.transcription`-style text streams and RPC."""
    async with joined(livekit_server, "alice") as alice, joined(livekit_server, "bob") as bob:
        texts: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        readers: set[asyncio.Task[None]] = set()

        def on_text(reader: rtc.TextStreamReader, sender: str) -> None:
            async def read() -> None:
                await texts.put((sender, await reader.read_all()))

            readers.add(asyncio.create_task(read()))

        bob.register_text_stream_handler("lk.transcription", on_text)

        async def echo(data: rtc.RpcInvocationData) -> str:
            return f"{data.caller_identity}: {data.payload}"

        bob.local_participant.register_rpc_method("echo", echo)

        long_text = "the quick brown fox " * 1000  # several chunks
        async with asyncio.timeout(EVENT_S):
            await alice.local_participant.send_text(long_text, topic="lk.transcription")
            assert await texts.get() == ("alice", long_text)
            reply = await alice.local_participant.perform_rpc(
                destination_identity="bob", method="echo", payload="ping"
            )
        assert reply == "alice: ping"


async def test_three_publishers_hear_each_other(livekit_server: LiveKitFixture) -> None:
    """Overlapping renegotiations: everyone publishes at once and hears the two others."""
    tones = {"alice": 300, "bob": 500, "carol": 700}
    async with (
        joined(livekit_server, "alice") as alice,
        joined(livekit_server, "bob") as bob,
        joined(livekit_server, "carol") as carol,
    ):
        rooms = {"alice": alice, "bob": bob, "carol": carol}
        heard: dict[tuple[str, str], asyncio.Future[rtc.Track]] = {}
        for listener, room in rooms.items():
            futures = {
                speaker: asyncio.get_running_loop().create_future()
                for speaker in tones
                if speaker != listener
            }
            heard.update({(listener, speaker): f for speaker, f in futures.items()})

            def on_subscribed(
                track: rtc.Track,
                _: rtc.RemoteTrackPublication,
                participant: rtc.RemoteParticipant,
                futures: dict[str, asyncio.Future[rtc.Track]] = futures,
            ) -> None:
                futures[participant.identity].set_result(track)

            room.on("track_subscribed", on_subscribed)

        sources = {name: rtc.AudioSource(SAMPLE_RATE, 1) for name in tones}
        players = [asyncio.create_task(play_tone(sources[n], tones[n])) for n in tones]
        try:
            options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            async with asyncio.timeout(EVENT_S):
                await asyncio.gather(
                    *(
                        rooms[name].local_participant.publish_track(
                            rtc.LocalAudioTrack.create_audio_track(name, sources[name]), options
                        )
                        for name in tones
                    )
                )
                tracks = {pair: await future for pair, future in heard.items()}
                pcms = await asyncio.gather(
                    *(receive_audio(track, seconds=0.5) for track in tracks.values())
                )
        finally:
            for player in players:
                player.cancel()
            for source in sources.values():
                await source.aclose()

    for (listener, speaker), pcm in zip(tracks, pcms, strict=True):
        assert abs(dominant_hz(pcm) - tones[speaker]) < 10, f"{listener} hearing {speaker}"


async def test_room_deleted_and_server_shutdown() -> None:
    """A server of its own, to stop it under a connected client."""
    async with LiveKitTestServer(CONFIG.api_key, CONFIG.api_secret, host=ADDRESS) as server:
        alice = rtc.Room()
        async with asyncio.timeout(CONNECT_S):
            await alice.connect(server.url, token("alice"))
        disconnected = next_event(alice, "disconnected")
        await server.delete_room(ROOM)
        assert await wait(disconnected) == (rtc.DisconnectReason.ROOM_DELETED,)
        assert not server.rooms

        async with asyncio.timeout(CONNECT_S):
            await alice.connect(server.url, token("alice"))
        disconnected = next_event(alice, "disconnected")
    assert await wait(disconnected) == (rtc.DisconnectReason.SERVER_SHUTDOWN,)


async def test_leave_reasons(livekit_server: LiveKitFixture) -> None:
    """Also the room's life: created by the first join, closed when the last one leaves."""
    created: list[str] = []
    joins: list[str] = []
    closed = asyncio.Event()

    async def on_joined(room: Room, participant: Participant) -> None:  # hooks may be async
        joins.append(participant.identity)

    server = livekit_server.server
    server.on_room_created(lambda room: created.append(room.name))
    server.on_participant_joined(on_joined)
    server.on_room_closed(lambda room: closed.set())
    async with joined(livekit_server, "alice") as alice:
        arrived = next_event(alice, "participant_connected", lambda p: p.identity == "bob")
        left = next_event(alice, "participant_disconnected", lambda p: p.identity == "bob")
        bob = rtc.Room()
        async with asyncio.timeout(CONNECT_S):
            await bob.connect(server.url, livekit_server.token("bob", ROOM))
        await wait(arrived)
        await bob.disconnect()
        (participant,) = await wait(left)
        assert participant.disconnect_reason == rtc.DisconnectReason.CLIENT_INITIATED

        # A client that dies without a word: its signalling socket just closes.
        arrived = next_event(alice, "participant_connected", lambda p: p.identity == "carol")
        left = next_event(alice, "participant_disconnected", lambda p: p.identity == "carol")
        carol = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import asyncio, sys\n"
            "from livekit import rtc\n"
            "async def main():\n"
            "    await rtc.Room().connect(sys.argv[1], sys.argv[2])\n"
            "    await asyncio.sleep(60)\n"
            "asyncio.run(main())\n",
            server.url,
            livekit_server.token("carol", ROOM),
            stdout=subprocess.DEVNULL,
        )
        try:
            async with asyncio.timeout(CONNECT_S):
                await arrived
        finally:
            carol.kill()
            await carol.wait()
        (participant,) = await wait(left)
        assert participant.disconnect_reason == rtc.DisconnectReason.SIGNAL_CLOSE

        # Removed by the server (RoomService.RemoveParticipant): both sides are told why.
        async with joined(livekit_server, "dave") as dave:
            left = next_event(alice, "participant_disconnected", lambda p: p.identity == "dave")
            dave_disconnected = next_event(dave, "disconnected")
            await server.remove_participant(ROOM, "dave")
            (participant,) = await wait(left)
            assert participant.disconnect_reason == rtc.DisconnectReason.PARTICIPANT_REMOVED
            assert await wait(dave_disconnected) == (rtc.DisconnectReason.PARTICIPANT_REMOVED,)

    async with asyncio.timeout(EVENT_S):  # the last one out closes the room
        await closed.wait()
    assert ROOM not in server.rooms
    assert created == [ROOM]
    assert joins == ["alice", "bob", "carol", "dave"]


async def test_attributes_reach_the_other_participant(livekit_server: LiveKitFixture) -> None:
    async with joined(livekit_server, "alice") as alice, joined(livekit_server, "bob") as bob:
        changed = next_event(
            bob,
            "participant_attributes_changed",
            lambda attrs, participant: participant.identity == "alice" and "mood" in attrs,
        )
        async with asyncio.timeout(EVENT_S):
            await alice.local_participant.set_attributes({"mood": "calm"})
        attrs, participant = await wait(changed)
        assert attrs == {"mood": "calm"}
        assert participant.attributes == {"mood": "calm"}
        alice_here = livekit_server.server.rooms[ROOM].participants["alice"]
        assert alice_here.attributes == {"mood": "calm"}


async def test_pings_keep_the_connection(
    livekit_server: LiveKitFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lkserver, "PING_INTERVAL_S", 1)
    monkeypatch.setattr(lkserver, "PING_TIMEOUT_S", 2)
    async with joined(livekit_server, "alice") as alice:
        await asyncio.sleep(4)  # two timeouts' worth: without pongs the client would give up
        assert alice.connection_state == rtc.ConnectionState.CONN_CONNECTED
        assert "alice" in livekit_server.server.rooms[ROOM].participants


BAD_TOKENS: dict[str, tuple[Callable[[], str], str]] = {
    "bad signature": (lambda: token("eve", api_secret="x" * 40), "invalid token signature"),
    "unknown key": (lambda: token("eve", api_key="otherkey"), "unknown API key"),
    "expired": (lambda: token("eve", ttl=timedelta(minutes=-5)), "token expired"),
    "no room_join": (
        lambda: token("eve", grants=api.VideoGrants(room_list=True, room=ROOM)),
        "token lacks the room_join grant",
    ),
}


@pytest.mark.parametrize("case", BAD_TOKENS)
async def test_bad_tokens_are_rejected(livekit_server: LiveKitFixture, case: str) -> None:
    server = livekit_server.server
    make_token, reason = BAD_TOKENS[case]
    bad = make_token()
    room = rtc.Room()
    with pytest.raises(rtc.ConnectError):
        async with asyncio.timeout(CONNECT_S):
            await room.connect(server.url, bad)
    assert not server.rooms

    async with aiohttp.ClientSession() as http:
        validate = f"{server.http_url}/rtc/validate"
        headers = {"Authorization": f"Bearer {bad}"}
        async with http.get(validate, headers=headers) as response:
            assert (response.status, await response.text()) == (401, reason)
        async with http.get(validate, params={"access_token": token("eve")}) as response:
            assert response.status == 200
