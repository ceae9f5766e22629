"""Canaries: fail loudly, with the reason, when the clients change under the test server.

`tests/lkserver` implements what the pinned SDKs do (LIVEKIT_PROTOCOL_NOTES.md), notably the
two-connection `/rtc` mode reached by falling back from `/rtc/v1`. A newer SDK may drop that
fallback or speak another protocol version; these tests say so instead of letting the other e2e
tests time out on ICE or signalling.
"""

from __future__ import annotations

import asyncio
import re
from importlib.metadata import version
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.typedefs import Handler
from livekit import api, rtc

from tests.lkserver.config import load_config
from tests.lkserver.netns import ADDRESS
from tests.lkserver.server import LiveKitTestServer

CONSTRAINTS = Path(__file__).resolve().parents[2] / "constraints.txt"
CLIENTS = ("livekit", "livekit-agents", "livekit-api", "livekit-protocol", "aiortc")
"""The packages whose wire behaviour the server was written against (pinned in CONSTRAINTS)."""
SIGNAL_PROTOCOL = "17"
"""The `protocol` the pinned rtc SDK sends on `/rtc`: the signalling the server implements."""
CONNECT_S = 20

pytestmark = pytest.mark.timeout(60)


def pinned_versions() -> dict[str, str]:
    """`name==version` lines of constraints.txt, names normalised as pip does."""
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        name, sep, pinned = line.partition("==")
        if sep and not line.startswith("#"):
            pins[re.sub(r"[-_.]+", "-", name.strip()).lower()] = pinned.strip()
    return pins


def test_the_installed_clients_are_the_pinned_ones() -> None:
    pins = pinned_versions()
    wrong = {
        name: (pins.get(name), installed)
        for name in CLIENTS
        if (installed := version(name)) != pins.get(name)
    }
    assert not wrong, (
        "installed LiveKit clients differ from constraints.txt (pinned, installed): "
        f"{wrong}. tests/lkserver speaks the pinned clients' protocol. Reinstall with "
        "`bash setup.sh`; to upgrade on purpose, change the pins, run the e2e group, and update "
        "the server and LIVEKIT_PROTOCOL_NOTES.md where the handshake changed."
    )


async def test_the_sdk_still_falls_back_to_the_signalling_the_server_implements() -> None:
    requests: list[tuple[str, dict[str, str]]] = []

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        requests.append((request.path, dict(request.query)))
        return await handler(request)

    config = load_config()
    server = LiveKitTestServer(config.api_key, config.api_secret, host=ADDRESS)
    server.app.middlewares.append(record)
    token = (
        api.AccessToken(config.api_key, config.api_secret)
        .with_identity("canary")
        .with_grants(api.VideoGrants(room_join=True, room="canary"))
        .to_jwt()
    )
    failure: BaseException | None = None
    async with server:
        room = rtc.Room()
        try:
            async with asyncio.timeout(CONNECT_S):
                await room.connect(server.url, token)
        except (rtc.ConnectError, TimeoutError) as e:
            failure = e
        finally:
            await room.disconnect()

    paths = [path for path, _ in requests]
    seen = f"requests seen: {paths}"
    assert paths[:1] == ["/rtc/v1"], (
        f"the rtc SDK no longer starts with /rtc/v1 ({seen}): check its signalling before "
        "trusting the e2e tests"
    )
    rtc_queries = [query for path, query in requests if path == "/rtc"]
    assert rtc_queries, (
        f"the rtc SDK no longer falls back from /rtc/v1 (404) to /rtc ({seen}): tests/lkserver "
        "only implements the two-connection /rtc mode; the single-connection /rtc/v1 mode is "
        "needed"
    )
    sent = rtc_queries[0].get("protocol")
    assert sent == SIGNAL_PROTOCOL, (
        f"the rtc SDK now sends protocol={sent} on /rtc, the server was written for "
        f"{SIGNAL_PROTOCOL}: compare the SDK's signalling with LIVEKIT_PROTOCOL_NOTES.md"
    )
    assert failure is None, f"the handshake looks as expected but connect failed: {failure!r}"
