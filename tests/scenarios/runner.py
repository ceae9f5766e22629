"""Scenario files (tests/scenarios/*.yaml) and the runner that plays them.

A scenario is data: a caller recording (whose manifest says when each utterance is said,
relative to what the agent does), what each provider stand-in answers, faults to turn on, and
what the caller must hear and receive. The runner starts real stand-in servers, points the real
plugins at them through the agent's config (`base_url`, exactly as a deployment would), runs the
worker's own call code over the in-process transport, and checks the outcome. Adding a scenario
needs no code.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

import numpy as np
import yaml
from livekit import rtc
from livekit.agents import vad
from pydantic import BaseModel, ConfigDict, Field

from tests.fakes import rms
from tests.harness import (
    CallHarness,
    Event,
    Recording,
    check_call_events,
    make_agent,
    read_ogg,
    wer,
)
from tests.polling import until
from tests.standins.base import Faults, StandIn
from tests.standins.elevenlabs import ElevenLabsStandIn
from tests.standins.mcp import McpStandIn
from tests.standins.openai import OpenAIStandIn
from tests.standins.tools import ToolServerStandIn
from tests.standins.webhooks import SECRET as WEBHOOK_SECRET
from tests.standins.webhooks import WebhookReceiver
from worker.providers import build_providers
from worker.records.report import RecordTarget
from worker.records.signing import secret_key
from worker.records.store import RecordStore
from worker.records.webhook import WebhookSender
from worker.settings import RecordingSettings

HERE = Path(__file__).resolve().parent
KEYS = {
    "DEEPGRAM_API_KEY": "dg-scenario-key",
    "OPENAI_API_KEY": "sk-scenario-key",
    "ELEVEN_API_KEY": "xi-scenario-key",
}
TOOL_KEY = "acme-scenario-key"
"""The order API's key: `${ACME_API_KEY}` in a scenario agent's tool headers."""
STAGE_KEYS = {"stt": "DEEPGRAM_API_KEY", "llm": "OPENAI_API_KEY", "tts": "ELEVEN_API_KEY"}
STAGE_PROVIDERS = {"stt": "deepgram", "llm": "openai", "tts": "elevenlabs"}
LOUD = 300.0
"""RMS (int16) above which the agent's audio counts as sound rather than silence."""
TALKS_ON_WITHIN = 1.5


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Trigger(_Strict):
    """The `nth` client event with these fields (`event` is its type)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    event: str
    nth: int = Field(default=1, ge=1)

    def fields(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def matches(self, event: Event) -> bool:
        return event["type"] == self.event and all(
            event.get(k) == v for k, v in self.fields().items()
        )


class Provider(_Strict):
    """One stand-in of a stage, in fallback order; `timeout`/`retries` go to the agent config."""

    timeout: float = 3.0
    retries: int = 1
    # stt
    content: Literal["manifest", "whisper"] = "manifest"
    # llm
    replies: list[Reply] = Field(default_factory=list)
    default: str = "Let me check that for you."
    after_tool: str = ""
    """What the model says after a tool's result; `{result}` is the result."""
    first_token: float = 0.2
    token_interval: float = 0.03
    # tts
    voice: Literal["piper", "hum"] = "piper"
    first_audio: float = 0.1


class Reply(_Strict):
    match: str
    """Regular expression searched in the caller's last message."""
    say: str = ""
    call: str | None = None
    """A tool the reply calls after its text (`end_call`)."""
    arguments: dict[str, Any] = Field(default_factory=dict)


class Fault(_Strict):
    stage: Literal["stt", "llm", "tts"]
    provider: int = 0
    set: dict[str, Any]
    """`Faults` fields: latency, status, drop_after, malformed, no_answer."""
    after: Trigger | None = None
    """When to turn it on; None: before the call starts."""
    delay: float = 0.0


class HangUp(_Strict):
    after: Trigger
    delay: float = 0.0


class Expected(_Strict):
    model_config = ConfigDict(extra="allow", frozen=True)
    role: Literal["user", "agent"]
    utterance: str | None = None
    """A user turn: the manifest text of this utterance."""
    text: str | None = None
    contains: str | None = None
    interrupted: bool | None = None


class BargeIn(_Strict):
    utterance: str
    stops_within: float = 1.0
    """Seconds after the utterance starts by which the agent must be silent."""


class ToolServer(_Strict):
    """The order API the agent's `http` tools call (tests/standins/tools.py); `{tool_server}`
    in the agent's overrides is its URL."""

    faults: dict[str, Any] = Field(default_factory=dict)
    """`Faults` fields, from the start."""


class ToolRequest(_Strict):
    path: str
    body: Any = None


class Expect(_Strict):
    ended: str
    transcripts: list[Expected]
    recorded: bool = False
    """Record the call: the caller on the left channel where each utterance played, the agent on
    the right, silent after each barge-in like the call's own audio."""
    tool_requests: list[ToolRequest] | None = None
    """Exactly the requests the tool server received, in order."""
    tool_events: list[dict[str, str]] | None = None
    """The `tool_call` events' name and status, in order."""
    offered_tools: list[str] | None = None
    """The tools every LLM request offered, by name."""
    mcp_calls: list[tuple[str, dict[str, Any]]] | None = None
    """Exactly the calls the MCP server received."""
    speech: bool = True
    """Every agent turn that says something is heard as speech (Silero finds it)."""
    barge_ins: list[BargeIn] = Field(default_factory=list)
    resumed: bool = False
    """Some agent turn paused (the caller made a sound) and went on speaking: a false
    interruption."""
    talks_through: list[str] = Field(default_factory=list)
    """Utterances the agent talks through (acknowledgements): it was talking before each, and
    is heard again within `TALKS_ON_WITHIN` seconds of its end."""
    cut_short: bool = False
    """A barge-in stopped the work on the reply it interrupted: the LLM stream was dropped
    before its end, and its TTS context was closed having received (and billed) only part of
    the reply."""
    apology_within: float | None = None
    """The recorded apology starts within this many seconds of the first faulty request."""
    next_call: bool = False
    """A second call afterwards, faults off, is served normally."""
    connections: dict[str, int] = Field(default_factory=dict)
    """WebSocket connections each stage's stand-ins accepted (a reconnect makes two)."""
    max_user_wer: float | None = None
    """For `content: whisper`: the recognised user text's word error rate at most this."""


class Scenario(_Strict):
    description: str
    recording: str
    agent: dict[str, Any] = Field(default_factory=dict)
    stt: list[Provider] = Field(default_factory=lambda: [Provider()], min_length=1)
    llm: list[Provider] = Field(default_factory=lambda: [Provider()], min_length=1)
    tts: list[Provider] = Field(default_factory=lambda: [Provider()], min_length=1)
    faults: list[Fault] = Field(default_factory=list)
    tool_server: ToolServer | None = None
    after: dict[str, Trigger] = Field(default_factory=dict)
    """Utterances said after another event than their manifest's `after`."""
    hang_up: HangUp | None = None
    expect: Expect
    timeout: Annotated[float, Field(gt=0, le=120)] = 60.0

    @classmethod
    def load(cls, path: Path) -> Scenario:
        return cls.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))


Provider.model_rebuild()


def scenario_files() -> list[Path]:
    return sorted(HERE.glob("*.yaml"))


# --- stand-ins ----------------------------------------------------------------------------------


@dataclass
class Stage:
    """A stage's stand-ins, in fallback order."""

    name: str
    servers: list[StandIn]


@dataclass
class Outcome:
    """What a scenario run produced, for its checks."""

    call: CallHarness
    stages: dict[str, Stage]
    played: dict[str, tuple[float, float]]
    """Call times each utterance started and finished playing."""
    fault_times: list[float]
    """Call times at which faults were turned on."""
    tool_server: ToolServerStandIn | None = None
    mcp_server: McpStandIn | None = None
    record: dict[str, Any] | None = None
    """The call's `call.ended` record as the backend's webhook receiver verified it."""
    recording: tuple[np.ndarray, int] | None = None
    """The recording's channels (caller, agent) and rate, read before its directory goes."""


class ScenarioRunner:
    """Runs a scenario; shared, heavy things (the VAD, voices, Whisper) come from outside."""

    def __init__(
        self,
        *,
        vad_model: vad.VAD,
        make_stand_in: Callable[[str, Provider, Recording, str], StandIn],
        keys: dict[str, str] | None = None,
        tool_key: str = TOOL_KEY,
    ) -> None:
        self.vad_model = vad_model
        self.make_stand_in = make_stand_in
        self.keys = keys or KEYS
        self.tool_key = tool_key
        """`${ACME_API_KEY}`: what the order API expects, and the call's environment holds."""

    @contextlib.asynccontextmanager
    async def stand_ins(
        self, scenario: Scenario, recording: Recording
    ) -> AsyncIterator[dict[str, Stage]]:
        async with contextlib.AsyncExitStack() as stack:
            stages: dict[str, Stage] = {}
            for name in ("stt", "llm", "tts"):
                servers = []
                for spec in getattr(scenario, name):
                    server = self.make_stand_in(name, spec, recording, self.keys[STAGE_KEYS[name]])
                    servers.append(await stack.enter_async_context(server))
                stages[name] = Stage(name, servers)
            yield stages

    def agent_config(self, scenario: Scenario, stages: dict[str, Stage]) -> dict[str, Any]:
        """The test agent with each stage pointing at its stand-ins, like a deployment's config."""
        overrides = dict(scenario.agent)
        for name, stage in stages.items():
            overrides[name] = [
                {
                    "provider": STAGE_PROVIDERS[name],
                    "base_url": server.url,
                    "timeout": spec.timeout,
                    "retries": spec.retries,
                }
                for server, spec in zip(stage.servers, getattr(scenario, name), strict=True)
            ]
        return overrides

    async def run(self, scenario: Scenario, recording: Recording) -> Outcome:
        async with (
            self.stand_ins(scenario, recording) as stages,
            ToolServerStandIn(api_key=self.tool_key) as tools,
            McpStandIn() as crm,
            _backend() as (records, receiver, directory),
        ):
            for name, value in (scenario.tool_server or ToolServer()).faults.items():
                setattr(tools.faults, name, value)
            overrides = _with_urls(
                self.agent_config(scenario, stages),
                {"tool_server": tools.url, "mcp_server": crm.url},
            )
            agent = make_agent(**overrides)
            recordings = (
                RecordingSettings(directory=directory) if scenario.expect.recorded else None
            )
            outcome = await self._call(scenario, recording, agent, stages, records, recordings)
            outcome.tool_server, outcome.mcp_server = tools, crm
            record_id = f"{outcome.call.setup.call_id}.ended"
            await until(lambda: record_id in receiver.accepted, 15, "the call's record")
            outcome.record = receiver.accepted[record_id]
            if described := outcome.record["recording"]:
                outcome.recording = read_ogg(Path(urlparse(described["location"]).path))
            if scenario.expect.next_call:
                for stage in stages.values():
                    for server in stage.servers:
                        server.faults = Faults()
                await self._next_call(agent)
            return outcome

    async def _call(
        self,
        scenario: Scenario,
        recording: Recording,
        agent: Any,
        stages: dict[str, Stage],
        records: RecordTarget,
        recordings: RecordingSettings | None,
    ) -> Outcome:
        providers = build_providers(agent, self.keys)
        env = {**self.keys, "ACME_API_KEY": self.tool_key}
        call = CallHarness(
            agent,
            vad_model=self.vad_model,
            providers=providers,
            env=env,
            records=records,
            recording=recordings,
        )
        played: dict[str, tuple[float, float]] = {}
        fault_times: list[float] = []
        async with call:
            for fault in scenario.faults:
                if fault.after is None:
                    _apply(fault, stages)
                    fault_times.append(0.0)
            tasks = [
                asyncio.create_task(
                    self._say(call, recording, uid, played, scenario.after.get(uid))
                )
                for uid in recording.utterances
            ]
            tasks += [
                asyncio.create_task(self._fault(call, fault, stages, fault_times))
                for fault in scenario.faults
                if fault.after is not None
            ]
            if scenario.hang_up is not None:
                tasks.append(asyncio.create_task(self._hang_up(call, scenario.hang_up)))
            try:
                await call.wait_event(lambda e: e["type"] == "call_ended", timeout=scenario.timeout)
            finally:
                for task in tasks:
                    task.cancel()
            missed = [uid for uid in recording.utterances if uid not in played]
            assert not missed, f"never played (their trigger did not come): {missed}"
            await call.result(timeout=15)
        return Outcome(call, stages, played, fault_times)

    async def _say(
        self,
        call: CallHarness,
        recording: Recording,
        uid: str,
        played: dict[str, tuple[float, float]],
        trigger: Trigger | None,
    ) -> None:
        utterance = recording.utterances[uid]
        trigger = trigger or Trigger.model_validate(utterance["after"])
        await call.wait_nth(trigger.matches, trigger.nth, timeout=120)
        await asyncio.sleep(float(utterance.get("delay", 0.0)))
        start = call.now()
        end = await call.play(recording.clip(uid))
        played[uid] = (start, end)

    async def _fault(
        self, call: CallHarness, fault: Fault, stages: dict[str, Stage], times: list[float]
    ) -> None:
        assert fault.after is not None
        await call.wait_nth(fault.after.matches, fault.after.nth, timeout=120)
        await asyncio.sleep(fault.delay)
        _apply(fault, stages)
        times.append(call.now())

    async def _hang_up(self, call: CallHarness, hang_up: HangUp) -> None:
        await call.wait_nth(hang_up.after.matches, hang_up.after.nth, timeout=120)
        await asyncio.sleep(hang_up.delay)
        call.transport.hang_up("the caller hung up")

    async def _next_call(self, agent: Any) -> None:
        """Another call with the same agent: it must greet, and be heard."""
        call = CallHarness(
            agent, vad_model=self.vad_model, providers=build_providers(agent, self.keys)
        )
        async with call:
            greeting = await call.wait_event(
                lambda e: e["type"] == "transcript" and e["role"] == "agent", timeout=20
            )
            assert greeting["text"] == agent.greeting
            assert call.agent_rms(0, call.now()) > LOUD, "the next call's greeting was heard"


@contextlib.asynccontextmanager
async def _backend() -> AsyncIterator[tuple[RecordTarget, WebhookReceiver, Path]]:
    """The call's record path as a deployment has it: an outbox file, the main process's
    sender, and the backend's receiver verifying the signatures."""
    with tempfile.TemporaryDirectory() as directory:
        store = RecordStore(Path(directory) / "webhooks.sqlite3")
        async with WebhookReceiver() as receiver:
            sender = WebhookSender(store, secret_key(WEBHOOK_SECRET), timeout=5.0, poll=0.05)
            delivering = asyncio.create_task(sender.run())
            target = RecordTarget(
                url=receiver.url,
                events=("call.started", "call.ended"),
                retry_for=60.0,
                outbox=store.path,
                metadata_values=(),
            )
            try:
                yield target, receiver, Path(directory)
            finally:
                delivering.cancel()
                await asyncio.gather(delivering, return_exceptions=True)
                store.close()


def spoken_turns(events: list[Event]) -> list[dict[str, Any]]:
    """The final transcripts as the caller's app puts them together (parts joined)."""
    turns: list[dict[str, Any]] = []
    for event in events:
        if event["type"] != "transcript" or not event.get("final"):
            continue
        if event.get("part", 1) == 1:
            turns.append(
                {"role": event["role"], "text": "", "interrupted": event.get("interrupted")}
            )
        turns[-1]["text"] += event["text"]
    return turns


def _check_recording(outcome: Outcome, expect: Expect) -> None:
    """The recording's two channels against what the call played and heard."""
    assert outcome.record is not None
    described = outcome.record["recording"]
    assert described is not None, "the call was not recorded"
    assert described["channels"] == ["caller", "agent"]
    assert outcome.recording is not None
    (caller, agent), rate = outcome.recording
    call = outcome.call
    began = dt.datetime.fromisoformat(described["started_at"]).timestamp()

    def at(call_time: float) -> int:
        """A call-clock time as a sample index of the recording."""
        return int((call.wall_time(call_time) - began) * rate)

    def loud(channel: np.ndarray, start: float, end: float) -> float:
        return rms(channel[max(0, at(start)) : max(0, at(end))])

    assert abs(len(caller) / rate - described["duration"]) < 1.5, "the recording's length"
    for uid, (start, end) in outcome.played.items():
        assert loud(caller, start + 0.2, end - 0.2) > LOUD, f"the caller's {uid}, left"
    first = min(start for start, _ in outcome.played.values())
    assert loud(caller, first - 2.0, first - 0.2) < LOUD, "the agent's voice is not on the left"
    assert loud(agent, first - 2.0, first - 0.2) > LOUD, "the greeting, right"
    for barge_in in expect.barge_ins:
        start, _ = outcome.played[barge_in.utterance]
        assert loud(agent, start - 1.0, start) > LOUD, "the agent talking, right"
        after = start + barge_in.stops_within
        assert loud(agent, after, after + 0.5) < LOUD, "the agent cut, right: as played"


def _check_record(outcome: Outcome) -> None:
    """The backend's record tells what the caller's app was told."""
    record, call = outcome.record, outcome.call
    assert record is not None
    said = [{k: t[k] for k in ("role", "text", "interrupted")} for t in record["transcript"]]
    assert said == spoken_turns(call.events)
    assert record["end_reason"] == call.of_type("call_ended")[0]["reason"]
    assert [(t["name"], t["status"]) for t in record["tool_calls"]] == [
        (e["name"], e["status"]) for e in call.of_type("tool_call") if e["status"] != "started"
    ]
    assert record["agent"]["id"] == call.agent.id
    assert record["duration"] == call.of_type("call_ended")[0]["duration"]
    times = [t["at"] for t in record["transcript"]]
    assert times == sorted(times)


def _with_urls(value: Any, urls: dict[str, str]) -> Any:
    """`value` with `{tool_server}` and `{mcp_server}` in its strings replaced by their URLs."""
    if isinstance(value, str):
        for name, url in urls.items():
            value = value.replace(f"{{{name}}}", url)
        return value
    if isinstance(value, dict):
        return {k: _with_urls(v, urls) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_urls(v, urls) for v in value]
    return value


def _apply(fault: Fault, stages: dict[str, Stage]) -> None:
    server = stages[fault.stage].servers[fault.provider]
    for name, value in fault.set.items():
        if not hasattr(server.faults, name):
            raise ValueError(f"unknown fault {name!r}")
        setattr(server.faults, name, value)


# --- checks -------------------------------------------------------------------------------------


async def check(
    scenario: Scenario, recording: Recording, outcome: Outcome, vad_model: vad.VAD
) -> None:
    """Everything `expect` says, plus what every call must satisfy."""
    call, expect = outcome.call, scenario.expect
    check_call_events(call.events)
    _check_record(outcome)
    if expect.recorded:
        _check_recording(outcome, expect)
    ended = call.of_type("call_ended")[0]
    assert ended["reason"] == expect.ended, f"ended with {ended['reason']}"
    finals = [e for e in call.events if e["type"] == "transcript" and e.get("final")]
    got = [(e["role"], e["text"], e.get("interrupted")) for e in finals]
    assert len(finals) == len(expect.transcripts), f"transcripts: {got}"
    for event, wanted in zip(finals, expect.transcripts, strict=True):
        _check_transcript(event, wanted, recording, call.agent.greeting, expect.max_user_wer)
    if expect.speech:
        await _check_speech(call, finals, vad_model)
    for barge_in in expect.barge_ins:
        start, _ = outcome.played[barge_in.utterance]
        assert call.agent_rms(start - 1.0, start) > LOUD, "the agent was talking"
        after = start + barge_in.stops_within
        assert call.agent_rms(after, after + 0.5) < LOUD, "the agent stopped talking"
    if expect.resumed:
        assert _resumed_turns(call.events), "no agent turn paused and resumed"
    for uid in expect.talks_through:
        start, end = outcome.played[uid]
        assert call.agent_rms(start - 1.0, start) > LOUD, f"the agent was talking before {uid}"
        again = end + TALKS_ON_WITHIN
        assert call.agent_rms(again - 0.5, again) > LOUD, f"the agent went on after {uid}"
    if expect.cut_short:
        _check_cut_short(outcome)
    for stage, count in expect.connections.items():
        accepted = [
            r
            for server in outcome.stages[stage].servers
            for r in server.of_kind("connect")
            if r.outcome != "rejected"
        ]
        assert len(accepted) == count, [r.outcome for r in accepted]
    if expect.apology_within is not None:
        _check_apology(outcome, expect.apology_within)
    if expect.tool_requests is not None:
        assert outcome.tool_server is not None
        got_requests = [(r.path, r.body) for r in outcome.tool_server.of_kind("request")]
        assert got_requests == [(r.path, r.body) for r in expect.tool_requests], got_requests
    if expect.offered_tools is not None:
        llm = outcome.stages["llm"].servers[0]
        assert isinstance(llm, OpenAIStandIn)
        for completion in llm.completions:
            offered = [t["function"]["name"] for t in completion.request.body.get("tools", [])]
            assert offered == expect.offered_tools, offered
    if expect.mcp_calls is not None:
        assert outcome.mcp_server is not None
        assert outcome.mcp_server.calls == [tuple(c) for c in expect.mcp_calls]
    if expect.tool_events is not None:
        got_events = [{"name": e["name"], "status": e["status"]} for e in call.of_type("tool_call")]
        assert got_events == expect.tool_events, got_events


def _check_transcript(
    event: Event,
    wanted: Expected,
    recording: Recording,
    greeting: str,
    max_wer: float | None,
) -> None:
    assert event["role"] == wanted.role, (event, wanted)
    if wanted.utterance is not None:
        text = recording.text(wanted.utterance)
        if max_wer is None:
            assert event["text"] == text, (event["text"], text)
        else:
            assert wer(text, event["text"]) <= max_wer, (event["text"], text)
    if wanted.text is not None:
        expected = greeting if wanted.text == "{greeting}" else wanted.text
        assert event["text"] == expected, (event["text"], expected)
    if wanted.contains is not None:
        assert wanted.contains.lower() in event["text"].lower(), (event["text"], wanted.contains)
    if wanted.interrupted is not None:
        assert event.get("interrupted") == wanted.interrupted, event


async def _check_speech(call: CallHarness, finals: list[Event], vad_model: vad.VAD) -> None:
    """Each agent turn that said something was heard as speech between its `speaking` state
    and its transcript."""
    rate = call.speaker.sample_rate or 24000
    timeline = call.speaker.timeline
    for event in finals:
        if event["role"] != "agent" or not event["text"]:
            continue
        index = call.events.index(event)
        speaking = [
            i
            for i, e in enumerate(call.events[:index])
            if e["type"] == "agent_state" and e["state"] == "speaking"
        ]
        start = call.event_times[speaking[-1]] if speaking else 0.0
        end = call.event_times[index]
        window = timeline[int(start * rate) : int(end * rate)]
        heard = await speech_seconds(window, rate, vad_model)
        assert heard >= min(0.4, 0.3 * (end - start)), (
            f"agent turn {event['text']!r}: {heard:.2f}s of speech in {end - start:.2f}s"
        )


def _resumed_turns(events: list[Event]) -> list[str]:
    """Agent turns whose states went speaking, listening, speaking before they ended."""
    resumed, states = [], []
    for event in events:
        if event["type"] == "agent_state":
            states.append(event["state"])
        elif event["type"] == "transcript" and event["final"]:
            if event["role"] == "agent" and "speaking,listening,speaking" in ",".join(states):
                resumed.append(event["text"])
            states = []
    return resumed


def _check_cut_short(outcome: Outcome) -> None:
    llm_servers = [s for s in outcome.stages["llm"].servers if isinstance(s, OpenAIStandIn)]
    cut = [c for s in llm_servers for c in s.completions if c.outcome == "cancelled"]
    assert cut, "no LLM stream was dropped"
    reply = "".join(p for p in cut[0].reply if isinstance(p, str))
    assert len(cut[0].text_sent) < len(reply), "the LLM stream was dropped before its end"
    tts_servers = [s for s in outcome.stages["tts"].servers if isinstance(s, ElevenLabsStandIn)]
    contexts = [c for s in tts_servers for c in s.contexts() if c.text.strip()]
    heard = [c for c in contexts if reply.startswith(c.text.strip()[:20])]
    assert heard, "the interrupted reply reached the TTS"
    assert heard[0].characters < len(reply), (
        f"TTS billed {heard[0].characters} of the reply's {len(reply)} characters"
    )
    closed = [
        m.body["context_id"]
        for s in tts_servers
        for m in s.of_kind("message")
        if isinstance(m.body, dict) and m.body.get("close_context")
    ]
    assert heard[0].context_id in closed, "the TTS context was closed"


def _check_apology(outcome: Outcome, within: float) -> None:
    call = outcome.call
    faulty = [
        r
        for stage in outcome.stages.values()
        for server in stage.servers
        for r in server.received
        if r.outcome in ("rejected", "dropped", "cancelled", "open")
    ]
    assert faulty, "no provider saw a faulty request"
    offset = time.monotonic() - call.now()
    first = min(r.at - offset for r in faulty)
    rate = call.speaker.sample_rate or 24000
    loud = _loud_windows(call.speaker.timeline, rate)
    onsets = [t for t in loud if t >= first]
    assert onsets, "no apology was heard"
    assert onsets[0] - first <= within, f"apology {onsets[0] - first:.1f}s after the fault"
    last = [e for e in call.events if e["type"] == "transcript" and e["role"] == "agent"][-1]
    assert last["text"] == call.agent.messages.error_goodbye


def _loud_windows(samples: np.ndarray, rate: int, window: float = 0.05) -> list[float]:
    step = int(rate * window)
    return [
        i / rate
        for i in range(0, len(samples) - step, step)
        if float(np.sqrt(np.mean(samples[i : i + step].astype(np.float64) ** 2))) > LOUD
    ]


async def speech_seconds(samples: np.ndarray, rate: int, vad_model: vad.VAD) -> float:
    """Seconds of `samples` Silero calls speech (run as fast as it goes, not in real time)."""
    stream = vad_model.stream()
    step = rate // 50
    for i in range(0, len(samples) - step, step):
        stream.push_frame(rtc.AudioFrame(samples[i : i + step].tobytes(), rate, 1, step))
    stream.push_frame(rtc.AudioFrame(np.zeros(rate, np.int16).tobytes(), rate, 1, rate))
    stream.end_input()
    speech = 0.0
    async for event in stream:
        if event.type == vad.VADEventType.END_OF_SPEECH:
            speech += event.speech_duration
    return speech
