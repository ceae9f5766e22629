"""The session API against tests/lkserver's server APIs (Twirp and the agent-worker protocol),
over loopback HTTP: no WebRTC here, so no network namespace either.

`livekit` is the test server; `worker` a hand-driven agent worker that takes (or declines) the
jobs dispatched to the worker's agent name; `client` an HTTP client for the API app in process.
For tests that drive the API synchronously (schemathesis), `api_process` runs the real
`python -m worker api` against a test server in a thread of its own (`livekit_in_thread`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from livekit import api
from livekit.protocol import agent as proto_agent

from tests.lkserver.config import load_config
from tests.lkserver.server import LiveKitTestServer
from tests.lkserver.twirp import TwirpService
from tests.lkserver.workers import WorkerService
from worker.api.app import create_app
from worker.api.auth import ApiKeys
from worker.api.sessions import SessionService
from worker.config import AgentRegistry, load_registry
from worker.settings import DEFAULT_AGENT_NAME, ApiSettings

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-key-0123456789abcdef"
OTHER_KEY = "other-key-0123456789abcdef"
SUPPORT_ID = "5b710eca-ee67-4c3a-aeb6-8b541f451b40"
CONFIG = load_config()


@dataclass
class LiveKit:
    server: LiveKitTestServer
    workers: WorkerService

    @property
    def url(self) -> str:
        return self.server.http_url


@pytest.fixture
async def livekit() -> AsyncIterator[LiveKit]:
    server = LiveKitTestServer(CONFIG.api_key, CONFIG.api_secret, host="127.0.0.1", port=0)
    workers = WorkerService(server)
    TwirpService(server, workers)
    async with server:
        try:
            yield LiveKit(server, workers)
        finally:
            await workers.aclose()


@dataclass
class HandWorker:
    """An agent worker speaking the protocol by hand: registers, answers availability requests."""

    accept: bool = True
    jobs: list[proto_agent.Job] = field(default_factory=list)
    """The jobs assigned to it."""


@pytest.fixture
async def worker(livekit: LiveKit) -> AsyncIterator[HandWorker]:
    """A registered worker for the API's agent name that takes every job."""
    async with hand_worker(livekit) as registered:
        yield registered


@contextlib.asynccontextmanager
async def hand_worker(livekit: LiveKit, *, accept: bool = True) -> AsyncIterator[HandWorker]:
    token = api.AccessToken(CONFIG.api_key, CONFIG.api_secret)
    token = token.with_grants(api.VideoGrants(agent=True))
    headers = {"Authorization": f"Bearer {token.to_jwt()}"}
    state = HandWorker(accept=accept)
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{livekit.url}/agent", headers=headers) as ws,
    ):
        register = proto_agent.RegisterWorkerRequest(
            type=proto_agent.JT_ROOM, agent_name=DEFAULT_AGENT_NAME
        )
        await ws.send_bytes(proto_agent.WorkerMessage(register=register).SerializeToString())
        await ws.receive_bytes(timeout=10)
        serving = asyncio.create_task(_serve(ws, state))
        try:
            yield state
        finally:
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving


async def _serve(ws: aiohttp.ClientWebSocketResponse, state: HandWorker) -> None:
    async for message in ws:
        if message.type != aiohttp.WSMsgType.BINARY:
            continue
        server_message = proto_agent.ServerMessage.FromString(message.data)
        kind = server_message.WhichOneof("message")
        if kind == "availability":
            job = server_message.availability.job
            answer = proto_agent.AvailabilityResponse(
                job_id=job.id, available=state.accept, participant_identity=f"agent-{job.id}"
            )
            await ws.send_bytes(proto_agent.WorkerMessage(availability=answer).SerializeToString())
        elif kind == "assignment":
            state.jobs.append(server_message.assignment.job)


def settings_for(livekit_url: str, **overrides: Any) -> ApiSettings:
    base = ApiSettings(livekit_url=livekit_url, public_url="wss://livekit.example.com")
    return replace(base, **{"dispatch_wait": 2.0, **overrides})


@pytest.fixture
def registry() -> AgentRegistry:
    return load_registry(ROOT / "prompts")


ClientFactory = Callable[..., contextlib.AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def make_client(livekit: LiveKit, registry: AgentRegistry) -> ClientFactory:
    """`async with make_client(**settings) as client`: the app over `livekit`, keys API_KEY and
    OTHER_KEY; `settings` override `ApiSettings` fields (`livekit_url`, `api_secret` too)."""

    @contextlib.asynccontextmanager
    async def make(
        *, api_secret: str = CONFIG.api_secret, rate_limit: int = 1000, **overrides: Any
    ) -> AsyncIterator[httpx.AsyncClient]:
        settings = settings_for(overrides.pop("livekit_url", livekit.url), **overrides)
        service = SessionService(registry, settings, CONFIG.api_key, api_secret)
        app = create_app(service, ApiKeys([API_KEY, OTHER_KEY]), rate_limit)
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                yield client
        finally:
            await service.aclose()

    return make


@pytest.fixture
async def client(make_client: ClientFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client() as running:
        yield running


def auth(key: str = API_KEY) -> Mapping[str, str]:
    return {"X-API-Key": key}


@contextlib.contextmanager
def livekit_in_thread() -> Iterator[str]:
    """A test server (Twirp and workers) on its own event loop in a thread; yields its URL."""
    loop = asyncio.new_event_loop()
    started: asyncio.Future[str] = loop.create_future()
    stop = asyncio.Event()

    async def serve() -> None:
        server = LiveKitTestServer(CONFIG.api_key, CONFIG.api_secret, host="127.0.0.1", port=0)
        workers = WorkerService(server)
        TwirpService(server, workers)
        async with server:
            started.set_result(server.http_url)
            await stop.wait()
            await workers.aclose()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        yield asyncio.run_coroutine_threadsafe(_result(started), loop).result(timeout=10)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)
        loop.close()


async def _result(future: asyncio.Future[str]) -> str:
    return await future


@contextlib.contextmanager
def api_process(
    livekit_url: str, log_path: Path, *, healthy: bool = True, **env: str
) -> Iterator[str]:
    """`python -m worker api` on a free loopback port until it answers /healthz (or just
    /openapi.json, if LiveKit is not meant to be `healthy`); yields its URL. Its log (stdout
    and stderr) goes to `log_path`."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {
        **os.environ,
        "LIVEKIT_URL": livekit_url,
        "LIVEKIT_API_KEY": CONFIG.api_key,
        "LIVEKIT_API_SECRET": CONFIG.api_secret,
        "WORKER_API_KEYS": f"{API_KEY},{OTHER_KEY}",
        "WORKER_PROMPTS_DIR": str(ROOT / "prompts"),
        "WORKER_API_DISPATCH_WAIT": "0",  # no worker: the API answers once LiveKit has the dispatch
        **env,
    }
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker", "api", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_ready(f"{url}/healthz" if healthy else f"{url}/openapi.json", process)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"python -m worker api exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    pytest.fail(f"python -m worker api did not answer {url} within 30 s")
