"""The call page's server side: what `/` is served with, and who demo mode admits.

The page itself runs in Chromium in the browser group; here, over in-process HTTP, the rules
that keep it from being a way around the API's keys.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest

from tests.api.conftest import SUPPORT_ID, ClientFactory, HandWorker, auth
from worker.api import page as page_module
from worker.api.page import CallPage, livekit_origins, resolve_demo_agents
from worker.config import AgentRegistry
from worker.dispatch import MAX_DURATION_KEY
from worker.settings import ApiSettings, DemoSettings, SettingsError

PAGE_HEADERS = {"Sec-Fetch-Site": "same-origin", "Origin": "http://api"}
"""What a browser sends with the page's own `fetch` (base URL http://api)."""
DEMO = DemoSettings(agents=(SUPPORT_ID,))


async def test_the_page_is_served_without_a_key_under_a_strict_policy(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "frame-ancestors 'none'" in policy
    # the inline script runs by its hash, and it talks to this site and the LiveKit URL only
    assert re.search(r"script-src 'self' 'sha256-[A-Za-z0-9+/=]+'", policy), policy
    assert "connect-src 'self' wss://livekit.example.com https://livekit.example.com" in policy
    assert response.headers["referrer-policy"] == "no-referrer"
    assert "livekit-client.umd.js" in response.text
    assert "X-API-Key" not in response.text
    assert "Authorization" not in response.text


def test_each_inline_block_of_the_page_is_in_its_policy() -> None:
    page = CallPage.load("ws://10.0.0.1:7880")
    html = page.html.decode()
    assert html.count("<script>") == 1
    assert html.count("<style>") == 1
    policy = page.headers["Content-Security-Policy"]
    assert "connect-src 'self' ws://10.0.0.1:7880 http://10.0.0.1:7880;" in policy
    assert policy.count("'sha256-") == 2


def test_livekit_cloud_urls_allow_its_regional_hosts() -> None:
    assert livekit_origins("wss://acme.livekit.cloud") == [
        "wss://acme.livekit.cloud",
        "https://acme.livekit.cloud",
        "wss://*.livekit.cloud",
        "https://*.livekit.cloud",
    ]
    assert livekit_origins("") == []


async def test_a_missing_sdk_is_a_clear_503(
    monkeypatch: pytest.MonkeyPatch, make_client: ClientFactory
) -> None:
    monkeypatch.setattr(page_module, "SDK_FILE", "not-installed.js")  # what setup.sh copies
    async with make_client() as client:
        response = await client.get("/livekit-client.umd.js")
    assert response.status_code == 503
    assert "setup.sh" in response.json()["detail"]


async def test_the_sdk_setup_installed_is_served(client: httpx.AsyncClient) -> None:
    response = await client.get("/livekit-client.umd.js")
    assert response.status_code == 200, "run setup.sh: it copies the SDK beside the page"
    assert response.headers["content-type"].startswith("text/javascript")
    assert "LivekitClient" in response.text[:2000]


async def test_demo_mode_is_off_by_default(client: httpx.AsyncClient) -> None:
    assert (await client.get("/demo/agents")).status_code == 404
    response = await client.post(
        "/demo/sessions", json={"agent_id": SUPPORT_ID}, headers=PAGE_HEADERS
    )
    assert response.status_code == 404
    assert "demo mode is off" in response.json()["detail"]


async def test_demo_mode_offers_only_its_agents(make_client: ClientFactory) -> None:
    async with make_client(demo=DEMO) as client:
        agents = (await client.get("/demo/agents")).json()
        assert [a["id"] for a in agents] == [SUPPORT_ID]
        other = "0f9c7a62-1c7e-4d0b-9a3e-3d1b5c2e8f10"
        response = await client.post(
            "/demo/sessions", json={"agent_id": other}, headers=PAGE_HEADERS
        )
        assert response.status_code == 404
        assert "not offered in demo mode" in response.json()["detail"]


@pytest.mark.parametrize(
    "headers",
    [
        {},  # a script, not a browser
        {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
        {"Origin": "https://evil.example"},  # an older browser: no Sec-Fetch-Site
    ],
)
async def test_demo_sessions_are_only_for_the_page_on_this_site(
    make_client: ClientFactory, worker: HandWorker, headers: dict[str, str]
) -> None:
    async with make_client(demo=DEMO) as client:
        response = await client.post(
            "/demo/sessions", json={"agent_id": SUPPORT_ID}, headers=headers
        )
        assert response.status_code == 403, response.text
    assert worker.jobs == []


async def test_a_demo_session_is_a_capped_session_no_key_can_end(
    make_client: ClientFactory, worker: HandWorker
) -> None:
    async with make_client(demo=DemoSettings(agents=(SUPPORT_ID,), max_duration=60)) as client:
        response = await client.post(
            "/demo/sessions", json={"agent_id": SUPPORT_ID}, headers=PAGE_HEADERS
        )
        assert response.status_code == 201, response.text
        session = response.json()
        assert session["agent_id"] == SUPPORT_ID
        assert session["token"]
        [job] = worker.jobs
        assert json.loads(job.metadata)[MAX_DURATION_KEY] == 60
        ended = await client.delete(f"/v1/voice-sessions/{session['room_name']}", headers=auth())
        assert ended.status_code == 404  # not this key's session


@pytest.mark.parametrize(
    ("per_client", "in_all", "refusal"),
    [(2, 10, "too many demo calls from here"), (10, 2, "too many demo calls: retry")],
)
async def test_demo_sessions_are_rate_limited_per_client_and_in_all(
    make_client: ClientFactory, worker: HandWorker, per_client: int, in_all: int, refusal: str
) -> None:
    demo = DemoSettings(agents=(SUPPORT_ID,), rate_limit=per_client, total_limit=in_all)
    async with make_client(demo=demo) as client:
        answers = [
            await client.post("/demo/sessions", json={"agent_id": SUPPORT_ID}, headers=PAGE_HEADERS)
            for _ in range(3)
        ]
    assert [a.status_code for a in answers] == [201, 201, 429]
    assert refusal in answers[2].json()["detail"]
    assert len(worker.jobs) == 2


def test_an_unknown_demo_agent_stops_the_api_at_start(registry: AgentRegistry) -> None:
    with pytest.raises(SettingsError, match=r"WORKER_DEMO_AGENTS: .*nope"):
        resolve_demo_agents(DemoSettings(agents=("nope",)), registry)
    resolved = resolve_demo_agents(DemoSettings(agents=(SUPPORT_ID[:8], SUPPORT_ID)), registry)
    assert resolved.agents == (SUPPORT_ID,)


def test_demo_settings_come_from_the_environment() -> None:
    env = {"WORKER_DEMO_AGENTS": f" {SUPPORT_ID} ,", "WORKER_DEMO_RATE_LIMIT": "5"}
    demo = ApiSettings.from_env(env).demo
    assert demo == DemoSettings(agents=(SUPPORT_ID,), rate_limit=5)
    assert not ApiSettings.from_env({}).demo.agents
    with pytest.raises(SettingsError, match="WORKER_DEMO_MAX_DURATION"):
        DemoSettings.from_env({"WORKER_DEMO_MAX_DURATION": "1"})
