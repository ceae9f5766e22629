"""`python -m worker api` as a subprocess against the test server, and a client holding its key
(the session API's e2e tests, the call page's browser tests)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.calls import SUPPORT_PROMPT, worker_command
from tests.e2e.conftest import LiveKitFixture

API_KEY = "e2e-session-api-key-0123456789ab"
"""32 characters: the API refuses keys under 16."""
START_S = 30
"""For the API to import FastAPI and the LiveKit SDK and answer /healthz, on a busy machine."""


@dataclass
class SessionApi:
    """A running `python -m worker api` and an HTTP client for it, holding the test's key."""

    url: str
    http: aiohttp.ClientSession
    process: asyncio.subprocess.Process
    log_path: Path

    async def request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        """The status and the JSON body (None when empty) of an authorized request."""
        async with self.http.request(
            method, self.url + path, json=body, headers={"X-API-Key": API_KEY}
        ) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """`POST /v1/voice-sessions`, which must succeed."""
        status, session = await self.request("POST", "/v1/voice-sessions", body)
        assert status == 201, session
        assert isinstance(session, dict)
        return session


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@asynccontextmanager
async def session_api(
    lk: LiveKitFixture,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    prompts: Sequence[Path] = (SUPPORT_PROMPT,),
) -> AsyncIterator[SessionApi]:
    """`python -m worker api` serving `prompts` on a free local port, once /healthz answers 200
    (it reaches the test server); stopped with SIGTERM and its log printed afterwards (shown for
    a failed test). `env` adds settings (`WORKER_DEMO_AGENTS`)."""
    prompts_dir = log_dir / "prompts"
    prompts_dir.mkdir(parents=True, exist_ok=True)
    for prompt in prompts:
        shutil.copy(prompt, prompts_dir)
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("WORKER_API_") and name != "LIVEKIT_AGENT_NAME"
    }
    environment.update(
        {
            "LIVEKIT_URL": lk.url,
            "LIVEKIT_API_KEY": lk.api_key,
            "LIVEKIT_API_SECRET": lk.api_secret,
            "LIVEKIT_PUBLIC_URL": "",  # the default: LIVEKIT_URL
            "WORKER_API_KEYS": API_KEY,
            "WORKER_PROMPTS_DIR": str(prompts_dir),
            **(env or {}),
        }
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = log_dir / "api.log"
    command = ["api", "--host", "127.0.0.1", "--port", str(port)]
    async with (
        worker_command(command, environment, log_path) as process,
        aiohttp.ClientSession() as http,
    ):
        await _healthy(http, url, process)
        yield SessionApi(url, http, process, log_path)


async def _healthy(
    http: aiohttp.ClientSession, url: str, process: asyncio.subprocess.Process
) -> None:
    try:
        async with asyncio.timeout(START_S):
            while process.returncode is None:
                try:
                    async with http.get(f"{url}/healthz") as response:
                        if response.status == 200:
                            assert await response.json() == {"status": "ok"}
                            return
                except aiohttp.ClientConnectionError:
                    pass  # not listening yet
                await asyncio.sleep(0.1)
    except TimeoutError:
        pytest.fail(f"timed out after {START_S} s waiting for the session API's /healthz")
    pytest.fail(f"the session API exited with code {process.returncode} before answering")
