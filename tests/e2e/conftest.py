"""The e2e group: the official LiveKit clients against `tests/lkserver`, in a network namespace.

Every test here needs the namespace's interface (libwebrtc ignores loopback): outside it they fail
under CI=true and are skipped with the command to use otherwise. `livekit_server` is the shared
fixture: a running server with the worker protocol and the Twirp API, keys from `livekit.yaml`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from livekit import api

from tests.lkserver.config import load_config
from tests.lkserver.netns import ADDRESS, RUNNER, in_test_namespace
from tests.lkserver.server import LiveKitTestServer, Room
from tests.lkserver.twirp import TwirpService
from tests.lkserver.workers import WorkerService

NAMESPACE_MISSING = (
    f"the e2e tests need the private network namespace with {ADDRESS} (libwebrtc ignores "
    f"loopback); run them with:  {RUNNER} python -m pytest -m e2e"
)


@pytest.fixture(autouse=True)
def _in_test_namespace() -> None:
    """Fail (CI) or skip (elsewhere) with the command to use, rather than time out on ICE."""
    if in_test_namespace():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(NAMESPACE_MISSING, pytrace=False)
    pytest.skip(NAMESPACE_MISSING)


class LiveKitFixture:
    """A running test server, with what a test needs to reach it."""

    def __init__(
        self, server: LiveKitTestServer, workers: WorkerService, twirp: TwirpService
    ) -> None:
        self.server = server
        self.workers = workers
        """The worker registry: registered workers, jobs, dispatches (`wait_until` to wait)."""
        self.twirp = twirp
        """The server API: what it was asked (SIP transfers)."""
        self._apis: list[api.LiveKitAPI] = []

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def api_key(self) -> str:
        return self.server.api_key

    @property
    def api_secret(self) -> str:
        return self.server.api_secret

    def token(
        self,
        identity: str,
        room: str,
        *,
        kind: api.AccessToken.ParticipantKind = "standard",
        **grants: Any,
    ) -> str:
        """A join token for `room`; `grants` are further `VideoGrants` fields."""
        return (
            api.AccessToken(self.api_key, self.api_secret)
            .with_identity(identity)
            .with_kind(kind)
            .with_grants(api.VideoGrants(room_join=True, room=room, **grants))
            .to_jwt()
        )

    def api(self) -> api.LiveKitAPI:
        """A server API client for this server, closed at teardown."""
        client = api.LiveKitAPI(self.server.http_url, self.api_key, self.api_secret)
        self._apis.append(client)
        return client

    async def create_room(self, name: str, **options: Any) -> Room:
        return await self.server.create_room(name, **options)

    async def aclose(self) -> None:
        for client in self._apis:
            await client.aclose()


@asynccontextmanager
async def running_server() -> AsyncIterator[LiveKitFixture]:
    """The test server with the worker protocol and Twirp (the fixture; `bench.soak`)."""
    config = load_config()
    # livekit.yaml's port: free inside the test namespace, and the file developers use is exercised
    server = LiveKitTestServer(config.api_key, config.api_secret, host=ADDRESS, port=config.port)
    workers = WorkerService(server)
    twirp = TwirpService(server, workers)
    async with server:
        fixture = LiveKitFixture(server, workers, twirp)
        try:
            yield fixture
        finally:
            await fixture.aclose()
            await workers.aclose()


@pytest.fixture
async def livekit_server() -> AsyncIterator[LiveKitFixture]:
    async with running_server() as fixture:
        yield fixture
