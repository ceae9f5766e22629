"""Provider keys and the tools' secrets never reach the caller or the logs, even when a
provider rejects them or a tool fails."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator

import pytest
from livekit.agents import vad
from livekit.agents.cli.log import JsonFormatter

from tests.harness import Recording
from tests.scenarios.runner import (
    HERE,
    Outcome,
    Provider,
    Scenario,
    ScenarioRunner,
    check,
)
from tests.standins.base import StandIn
from tests.standins.openai import OpenAIStandIn
from worker.logs import install_redaction

KEYS = {
    "DEEPGRAM_API_KEY": "dg-4f9c2a7e81b3d6e0c5a9f1e2",
    "OPENAI_API_KEY": "sk-proj-8d2e6b1a9c4f7e03b5d1a6c9",
    "ELEVEN_API_KEY": "xi-5b8e1d4a7c2f9e06a3d8b1c4",
    "ACME_API_KEY": "acme-live-3c7a9e1f5b2d8c4a6e0f",
}
"""The last is the tool scenarios' `${ACME_API_KEY}`: an order API's key in a tool's header."""


@pytest.fixture
def worker_log() -> Iterator[io.StringIO]:
    """Every record at DEBUG, written as the worker writes its logs in production: LiveKit's
    JSON formatter behind the worker's redaction filter."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    install_redaction(KEYS)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def wrong_keys(
    make: Callable[[str, Provider, Recording, str], StandIn],
) -> Callable[[str, Provider, Recording, str], StandIn]:
    """Stand-ins that expect other keys than the worker sends: every provider rejects it."""
    return lambda stage, spec, recording, key: make(stage, spec, recording, key[::-1])


async def run_and_collect(
    runner: ScenarioRunner, name: str, vad_model: vad.VAD, *, check_outcome: bool
) -> Outcome:
    scenario = Scenario.load(HERE / f"{name}.yaml")
    recording = Recording.load(scenario.recording)
    outcome = await runner.run(scenario, recording)
    if check_outcome:
        await check(scenario, recording, outcome, vad_model)
    return outcome


def assert_no_key_anywhere(outcome: Outcome, log: str, capfd: pytest.CaptureFixture[str]) -> None:
    """No key in the client events, the backend's call record, the logs, stdout or stderr (C
    libraries included)."""
    out, err = capfd.readouterr()
    assert outcome.record is not None, "the call's record reached the backend"
    captured = {
        "events": json.dumps(outcome.call.events),
        "call record (webhook body)": json.dumps(outcome.record),
        "logs": log,
        "stdout": out,
        "stderr": err,
    }
    for where, text in captured.items():
        leaked = [name for name, key in KEYS.items() if key in text]
        assert not leaked, f"{leaked} in the {where}"


@pytest.mark.timeout(120)
async def test_keys_stay_secret_in_a_whole_call(
    runner: ScenarioRunner,
    vad_model: vad.VAD,
    worker_log: io.StringIO,
    capfd: pytest.CaptureFixture[str],
) -> None:
    keyed = ScenarioRunner(vad_model=vad_model, make_stand_in=runner.make_stand_in, keys=KEYS)
    outcome = await run_and_collect(keyed, "barge_in", vad_model, check_outcome=True)
    sent = [r.headers for s in outcome.stages.values() for srv in s.servers for r in srv.received]
    assert any(KEYS["OPENAI_API_KEY"] in h.get("Authorization", "") for h in sent), (
        "the keys were really used"
    )
    assert worker_log.getvalue(), "the logs were captured"
    assert_no_key_anywhere(outcome, worker_log.getvalue(), capfd)


@pytest.mark.timeout(120)
async def test_rejected_keys_stay_secret(
    runner: ScenarioRunner,
    vad_model: vad.VAD,
    worker_log: io.StringIO,
    capfd: pytest.CaptureFixture[str],
) -> None:
    rejecting = ScenarioRunner(
        vad_model=vad_model, make_stand_in=wrong_keys(runner.make_stand_in), keys=KEYS
    )
    outcome = await run_and_collect(rejecting, "stt_down", vad_model, check_outcome=False)
    assert outcome.call.of_type("call_ended")[0]["reason"] == "error"
    rejected = [r for s in outcome.stages.values() for srv in s.servers for r in srv.received]
    assert any(r.outcome == "rejected" for r in rejected), "a provider rejected its key"
    assert "401" in worker_log.getvalue(), "the rejection was logged"
    assert_no_key_anywhere(outcome, worker_log.getvalue(), capfd)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["tool_order_status", "tool_failing"])
async def test_a_tools_secret_stays_secret(
    runner: ScenarioRunner,
    vad_model: vad.VAD,
    worker_log: io.StringIO,
    capfd: pytest.CaptureFixture[str],
    name: str,
) -> None:
    """The header's `${ACME_API_KEY}` reaches the order API, and nothing else: not the events,
    not the logs (the tool's failure included), not the LLM."""
    keys = {k: v for k, v in KEYS.items() if k != "ACME_API_KEY"}
    keyed = ScenarioRunner(
        vad_model=vad_model,
        make_stand_in=runner.make_stand_in,
        keys=keys,
        tool_key=KEYS["ACME_API_KEY"],
    )
    outcome = await run_and_collect(keyed, name, vad_model, check_outcome=True)
    assert outcome.tool_server is not None
    sent = [r.headers.get("X-Api-Key") for r in outcome.tool_server.of_kind("request")]
    assert sent == [KEYS["ACME_API_KEY"]], "the key was really used"
    llm = outcome.stages["llm"].servers[0]
    assert isinstance(llm, OpenAIStandIn)
    prompts = json.dumps([c.request.body for c in llm.completions])
    assert KEYS["ACME_API_KEY"] not in prompts, "the LLM never sees a tool's secret"
    assert_no_key_anywhere(outcome, worker_log.getvalue(), capfd)
