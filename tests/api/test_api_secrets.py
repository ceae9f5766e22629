"""No API key and no LiveKit secret in what `python -m worker api` logs or answers, on any path:
success, bad input, bad keys, rate limiting, LiveKit refusing the credentials or unreachable."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.api.conftest import API_KEY, CONFIG, OTHER_KEY, api_process, livekit_in_thread

pytestmark = pytest.mark.timeout(120)

KEY_FROM_FILE = "file-key-0123456789abcdef"
WRONG_SECRET = "wrong-secret-0123456789abcdef-0123456789"


def exercise(url: str, responses: list[httpx.Response]) -> None:
    """Every endpoint, each way in and out, as a backend might."""
    with httpx.Client(base_url=url, timeout=15) as http:
        for key in (API_KEY, OTHER_KEY, KEY_FROM_FILE):
            body = {"agent_id": "5b710eca", "context": {"customer_name": "Sam"}}
            created = http.post("/v1/voice-sessions", json=body, headers={"X-API-Key": key})
            responses.append(created)
            if created.status_code == 201:
                room = created.json()["room_name"]
                bearer = {"Authorization": f"Bearer {key}"}
                responses.append(http.delete(f"/v1/voice-sessions/{room}", headers=bearer))
        for headers in (
            {"X-API-Key": API_KEY[:-1]},
            {"Authorization": f"Bearer {API_KEY}x"},
            {"Authorization": f"Basic {API_KEY}"},
        ):
            responses.append(http.get("/v1/agents", headers=headers))
        bad = {"agent_id": "5b710eca", "user_id": API_KEY + " !"}
        responses.append(http.post("/v1/voice-sessions", json=bad, headers={"X-API-Key": API_KEY}))
        for _ in range(4):  # past the rate limit
            responses.append(http.get("/v1/agents", headers={"X-API-Key": OTHER_KEY}))
        responses.append(http.get("/healthz"))
        responses.append(http.get("/openapi.json"))


@pytest.mark.parametrize("livekit_state", ["up", "refusing", "unreachable"])
def test_no_key_or_secret_in_the_api_logs_or_responses(tmp_path: Path, livekit_state: str) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# the partner backend\n{KEY_FROM_FILE}\n")
    env = {
        "WORKER_API_KEYS_FILE": str(keys_file),
        "WORKER_API_RATE_LIMIT": "3",
        "LIVEKIT_LOG_LEVEL": "DEBUG",
    }
    log = tmp_path / "api.log"
    responses: list[httpx.Response] = []
    with livekit_in_thread() as livekit:
        if livekit_state == "refusing":
            env["LIVEKIT_API_SECRET"] = WRONG_SECRET
        if livekit_state == "unreachable":
            # healthz fails from the start: the process is checked through /openapi.json instead
            env["LIVEKIT_URL"] = "http://127.0.0.1:9"
        with api_process(livekit, log, healthy=livekit_state == "up", **env) as url:
            exercise(url, responses)

    statuses = {r.status_code for r in responses}
    expected = {201, 204, 401, 400, 429} if livekit_state == "up" else {503, 401, 400, 429}
    assert expected <= statuses, statuses
    written = log.read_text(errors="replace")
    assert "worker.api" in written  # the log has lines to search
    answered = "\n".join(r.text + str(r.headers) for r in responses)
    for secret in (API_KEY, OTHER_KEY, KEY_FROM_FILE, CONFIG.api_secret, WRONG_SECRET):
        assert secret not in written
        assert secret not in answered
