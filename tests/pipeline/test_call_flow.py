"""A call from greeting to goodbye: what the caller hears and the events their app receives."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from livekit.agents import vad

from tests.fakes import FakeLLM, FakeSTT, FakeTTS, Reply
from tests.harness import (
    Event,
    FakeCallHarness,
    Recording,
    check_call_events,
    is_type,
    make_agent,
)
from worker.call.greetings import GreetingCache
from worker.protocol import EndReason

ANSWER = "Of course. Your order shipped yesterday and should arrive on Friday."
LONG_ANSWER = (
    "Let me look that up for you. I can see your order was packed this morning, it left our "
    "warehouse at noon, and the courier expects to deliver it tomorrow before six in the evening."
)
GREETING = "Hello, this is the test agent."
SILENT = 100.0  # rms below which the agent counts as silent
LOUD = 1000.0


def harness(
    vad_model: vad.VAD,
    script: Sequence[str | None],
    answer: str = ANSWER,
    agent_overrides: Mapping[str, Any] | None = None,
    limits: Mapping[str, int] | None = None,
    **kwargs: Any,
) -> FakeCallHarness:
    """A call with the fakes; `limits` may go below what a config file allows (seconds)."""
    agent = make_agent(**(agent_overrides or {}))
    if limits:
        agent = agent.model_copy(update={"limits": agent.limits.model_copy(update=limits)})
    llm = FakeLLM(
        lambda text: (
            Reply("Thank you for calling, goodbye!", tool="end_call")
            if "goodbye" in text.lower()
            else Reply(answer)
        )
    )
    return FakeCallHarness(
        agent,
        vad_model=vad_model,
        stt=FakeSTT(list(script)),
        llm=llm,
        tts=FakeTTS(),
        **kwargs,
    )


async def ask(call: FakeCallHarness, samples: np.ndarray) -> float:
    """Wait for the greeting to end, then speak; returns the call time the speech ended."""
    await call.wait_event(is_type("transcript", role="agent"))
    return await call.play(samples)


async def ask_and_listen(call: FakeCallHarness, samples: np.ndarray, seconds: float) -> Event:
    """Ask, then let the answer play for `seconds`; returns the caller's final transcript."""
    await ask(call, samples)
    user = await call.wait_event(is_type("transcript", role="user", final=True))
    await call.wait_event(is_type("agent_state", state="speaking"), after=call.events.index(user))
    await asyncio.sleep(seconds)
    return user


async def test_greets_first_then_answers_what_the_caller_asked(
    vad_model: vad.VAD, caller: Recording, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="worker")
    async with harness(vad_model, [caller.text("question")]) as call:
        greeting = await call.wait_event(is_type("transcript", role="agent"))
        assert greeting["text"] == "Hello, this is the test agent."
        assert greeting["interrupted"] is False
        assert call.agent_rms(0.2, 1.2) > LOUD, "the greeting is heard"
        spoken_at = call.now()
        ended = await call.play(caller.clip("question"))
        user = await call.wait_event(is_type("transcript", role="user", final=True))
        assert user["text"] == caller.text("question")
        reply = await call.wait_event(
            is_type("transcript", role="agent"), after=call.events.index(user)
        )
        assert reply == {**reply, "text": ANSWER, "final": True, "interrupted": False}
        assert call.llm.requests == [caller.text("question")], "the utterance reached the LLM"
        assert call.agent_rms(spoken_at, ended) < SILENT, "the agent kept quiet while asked"
        assert call.agent_rms(ended + 0.3, call.now()) > LOUD / 2, "the answer is heard"
        interims = call.of_type("transcript", role="user", final=False)
        assert interims, "interim user transcripts are sent while the caller speaks"
        assert all(caller.text("question").startswith(e["text"]) for e in interims)
        states = [e["state"] for e in call.of_type("agent_state")]
        assert states[:3] == ["initializing", "listening", "speaking"]
        assert "thinking" in states
    result = await call.result()
    assert result is not None
    assert result.reason == EndReason.CALLER_LEFT
    check_call_events(call.events)
    (summary,) = [r for r in caplog.records if r.getMessage().startswith("call ended:")]
    assert summary.call_id == "CA_test"  # type: ignore[attr-defined]
    assert summary.reason == "caller_left"  # type: ignore[attr-defined]
    assert (summary.user_turns, summary.agent_turns) == (1, 2)  # type: ignore[attr-defined]
    greeting_latency, latency = summary.turn_latency  # type: ignore[attr-defined]
    assert greeting_latency["tts_node_ttfb"] >= call.tts.ttfb
    assert 0 < latency["e2e_latency"] < 3, "per-turn latency from ChatMessage.metrics"
    assert latency["llm_node_ttft"] >= call.llm.ttft


async def test_the_next_call_plays_the_greeting_the_first_rendered(
    vad_model: vad.VAD, caller: Recording, tmp_path: Path
) -> None:
    cache = GreetingCache(tmp_path)
    async with harness(vad_model, [], greetings=cache) as first:
        await first.wait_event(is_type("transcript", role="agent", final=True))
    assert first.tts.texts == [GREETING]
    async with harness(vad_model, [caller.text("question")], greetings=cache) as second:
        greeting = await second.wait_event(is_type("transcript", role="agent", final=True))
        assert greeting == {**greeting, "text": GREETING, "interrupted": False}
        assert second.agent_rms(0.2, 1.2) > LOUD, "the kept greeting is heard"
        assert second.tts.texts == [], "no TTS request for it"
        await second.play(caller.clip("question"))
        user = await second.wait_event(is_type("transcript", role="user", final=True))
        reply = await second.wait_event(
            is_type("transcript", role="agent", final=True), after=second.events.index(user)
        )
        assert reply["text"] == ANSWER
    assert second.tts.texts == [ANSWER], "the answers still go to the TTS"
    check_call_events(second.events)


async def test_a_local_llm_reads_the_prompt_and_greeting_before_the_first_question(
    vad_model: vad.VAD, caller: Recording
) -> None:
    """The warm-up's context is exactly what the first question's prompt starts with, so the
    local model's cache holds all of it but the question."""
    agent = {"llm": [{"provider": "local"}]}
    async with harness(vad_model, [caller.text("question")], agent_overrides=agent) as call:
        await ask_and_listen(call, caller.clip("question"), 0.5)
    warm_up, question = call.llm.contexts
    assert [role for role, _ in warm_up] == ["system", "assistant"]
    assert warm_up[1] == ("assistant", "Hello, this is the test agent.")
    assert question[: len(warm_up)] == warm_up
    assert question[len(warm_up) :] == [("user", caller.text("question"))]


async def test_talking_over_the_reply_stops_it_and_truncates_its_transcript(
    vad_model: vad.VAD, caller: Recording
) -> None:
    script = [caller.text("question"), caller.text("barge_in")]
    async with harness(vad_model, script, LONG_ANSWER) as call:
        user = await ask_and_listen(call, caller.clip("question"), 1.5)
        barge_in_at = call.now()
        await call.play(caller.clip("barge_in"))
        reply = await call.wait_event(
            is_type("transcript", role="agent"), after=call.events.index(user)
        )
        assert reply["interrupted"] is True
        played = reply["text"]
        assert played, "some of the reply had played"
        assert LONG_ANSWER.startswith(played.rstrip())
        assert len(played.rstrip()) < len(LONG_ANSWER) / 2, "only what was played is kept"
        assert LONG_ANSWER[len(played.rstrip())] in " ,.", "cut at a word boundary"
        assert call.agent_rms(barge_in_at - 1.0, barge_in_at) > LOUD / 2
        assert call.agent_rms(barge_in_at + 1.0, barge_in_at + 2.0) < SILENT, "the agent stopped"
        second = await call.wait_event(
            is_type("transcript", role="user", final=True), after=call.events.index(reply)
        )
        assert second["text"] == caller.text("barge_in")
    check_call_events(call.events)


async def test_a_backchannel_pauses_the_reply_which_then_resumes_whole(
    vad_model: vad.VAD, caller: Recording
) -> None:
    script = [caller.text("question"), None]  # "mm hmm": heard, but no words
    async with harness(vad_model, script, LONG_ANSWER) as call:
        user = await ask_and_listen(call, caller.clip("question"), 1.5)
        started = call.now()
        ended = await call.play(caller.clip("backchannel"))
        reply = await call.wait_event(
            is_type("transcript", role="agent"), after=call.events.index(user), timeout=20
        )
        assert reply["interrupted"] is False
        assert reply["text"] == LONG_ANSWER
        assert call.agent_rms(started + 0.5, ended + 0.5) < SILENT, "the agent paused"
        resumed_by = ended + 1.5 + 1.0  # false_interruption_timeout, plus slack
        assert call.agent_rms(resumed_by, resumed_by + 1.0) > LOUD / 2, "the agent resumed"
        states = [e["state"] for e in call.events[call.events.index(user) :] if "state" in e]
        assert states[:4] == ["thinking", "speaking", "listening", "speaking"]
        assert len(call.llm.requests) == 1, "no new reply was generated"
    check_call_events(call.events)


@pytest.mark.parametrize(
    ("payload", "topic"),
    [(b'{"type":"end_call"}', "voice-agent"), (b'{"message":"AudioEnded"}', "")],
)
async def test_the_caller_app_ends_the_call_mid_reply(
    vad_model: vad.VAD, caller: Recording, payload: bytes, topic: str
) -> None:
    async with harness(vad_model, [caller.text("question")], LONG_ANSWER) as call:
        await ask_and_listen(call, caller.clip("question"), 1.0)
        sent_at = call.now()
        call.transport.send_data(payload, topic=topic)
        ended = await call.wait_event(is_type("call_ended"), timeout=1.0)
        assert ended["reason"] == "client_ended"
        assert call.agent_rms(sent_at + 0.4, call.now()) < SILENT, "agent audio stopped at once"
    result = await call.result()
    assert result is not None
    assert result.reason == EndReason.CLIENT_ENDED
    check_call_events(call.events)


async def test_the_caller_leaving_ends_the_call_once(vad_model: vad.VAD, caller: Recording) -> None:
    async with harness(vad_model, [caller.text("question")], LONG_ANSWER) as call:
        await ask(call, caller.clip("question"))
        await call.wait_event(is_type("agent_state", state="thinking"))
        call.transport.hang_up("caller disconnected (SIGNAL_CLOSE)")
        call.transport.hang_up("caller disconnected again")
        ended = await call.wait_event(is_type("call_ended"), timeout=3.0)
        assert ended["reason"] == "caller_left"
    assert await call.transport.closed == EndReason.CALLER_LEFT
    check_call_events(call.events)
    assert call.llm.was_closed, "a call's providers are closed when it ends (a local LLM's slot)"


async def test_a_finished_recording_ends_the_call_once_the_agent_has_answered(
    vad_model: vad.VAD, caller: Recording
) -> None:
    async with harness(vad_model, [caller.text("question")]) as call:
        await ask(call, caller.clip("question"))
        call.transport.listener.input_ended()  # type: ignore[union-attr]
        ended = await call.wait_event(is_type("call_ended"), timeout=20)
        assert ended["reason"] == "input_ended"
        answer = call.of_type("transcript", role="agent")[-1]
        assert answer["text"] == ANSWER, "the question was answered before the call ended"
        assert answer["interrupted"] is False
        said = [e["text"] for e in call.of_type("transcript", role="agent")]
        assert call.agent.messages.reprompt not in said, "no reprompt once the recording is over"
    check_call_events(call.events)


async def test_the_agent_hangs_up_with_its_end_call_tool(
    vad_model: vad.VAD, caller: Recording
) -> None:
    async with harness(vad_model, [caller.text("goodbye")]) as call:
        await ask(call, caller.clip("goodbye"))
        ended = await call.wait_event(is_type("call_ended"), timeout=15)
        assert ended["reason"] == "agent_ended"
        goodbye = call.events[-3]
        assert goodbye == {**goodbye, "role": "agent", "text": "Thank you for calling, goodbye!"}
        assert goodbye["interrupted"] is False, "the goodbye played out before hanging up"
        assert call.events[-2] == {**call.events[-2], "type": "agent_state", "state": "idle"}
        assert call.llm.requests == [caller.text("goodbye")], "no reply after hanging up"
    check_call_events(call.events)


async def test_max_duration_ends_with_a_goodbye(vad_model: vad.VAD) -> None:
    async with harness(vad_model, [], limits={"max_duration": 3}) as call:
        ended = await call.wait_event(is_type("call_ended"), timeout=15)
        assert ended["reason"] == "max_duration"
        assert 3.0 <= ended["duration"] < 3.0 + 10.0
        goodbye = call.of_type("transcript", role="agent")[-1]
        assert goodbye["text"] == call.agent.messages.max_duration_goodbye
        assert goodbye["interrupted"] is False
    check_call_events(call.events)


async def test_silence_gets_one_reprompt_then_a_goodbye(vad_model: vad.VAD) -> None:
    async with harness(vad_model, [], limits={"idle_timeout": 2}) as call:
        ended = await call.wait_event(is_type("call_ended"), timeout=20)
        assert ended["reason"] == "idle_timeout"
        said = [e["text"] for e in call.of_type("transcript", role="agent")]
        messages = call.agent.messages
        assert said == ["Hello, this is the test agent.", messages.reprompt, messages.idle_goodbye]
    check_call_events(call.events)


async def test_speaking_after_the_reprompt_keeps_the_call(
    vad_model: vad.VAD, caller: Recording
) -> None:
    async with harness(vad_model, [caller.text("question")], limits={"idle_timeout": 2}) as call:
        await call.wait_event(
            is_type("transcript", role="agent", text=call.agent.messages.reprompt)
        )
        await call.play(caller.clip("question"))
        await call.wait_event(is_type("transcript", role="agent", text=ANSWER))
        await asyncio.sleep(1.0)
        assert not call.of_type("call_ended"), "the caller answered: no goodbye yet"
        ended = await call.wait_event(is_type("call_ended"), timeout=10)
        assert ended["reason"] == "idle_timeout"
        said = [e["text"] for e in call.of_type("transcript", role="agent")]
        assert said.count(call.agent.messages.reprompt) == 2, "the reprompt is re-armed by speech"
    check_call_events(call.events)


async def test_worker_shutdown_says_goodbye_mid_call(vad_model: vad.VAD, caller: Recording) -> None:
    shutdown = asyncio.Event()
    async with harness(
        vad_model, [caller.text("question")], LONG_ANSWER, shutdown=shutdown
    ) as call:
        await ask(call, caller.clip("question"))
        await call.wait_event(is_type("agent_state", state="speaking"), after=5)
        shutdown.set()
        ended = await call.wait_event(is_type("call_ended"), timeout=15)
        assert ended["reason"] == "worker_shutdown"
        said = call.of_type("transcript", role="agent")
        assert said[-2]["text"] == LONG_ANSWER[: len(said[-2]["text"])]
        assert said[-2]["interrupted"] is True, "the answer was cut for the goodbye"
        assert said[-1]["text"] == call.agent.messages.shutdown_goodbye
    check_call_events(call.events)


async def test_placeholders_come_from_dispatch_metadata(vad_model: vad.VAD) -> None:
    overrides = {
        "greeting": "Hi {name}, welcome back.",
        "instructions": "The caller is {name} on the {plan} plan.",
        "placeholders": {"name": "there", "plan": "basic"},
    }
    call = harness(vad_model, [], agent_overrides=overrides, metadata='{"name": "Sam\\n{x}"}')
    async with call:
        greeting = await call.wait_event(is_type("transcript", role="agent"))
        assert greeting["text"] == "Hi Sam x, welcome back."


async def test_a_failing_llm_ends_the_call_with_the_recorded_apology(
    vad_model: vad.VAD, caller: Recording, caplog: pytest.LogCaptureFixture
) -> None:
    async with harness(vad_model, [caller.text("question")]) as call:
        call.llm.fail = True
        asked = await ask(call, caller.clip("question"))
        ended = await call.wait_event(is_type("call_ended"), timeout=15)
        assert ended["reason"] == "error"
        apology = call.of_type("transcript", role="agent")[-1]
        assert apology["text"] == call.agent.messages.error_goodbye
        heard = call.agent_rms(asked, call.now())
        assert heard > 300, "the apology was heard"
        assert call.llm.requests == [caller.text("question")]
    assert "llm error from FakeLLM (unrecoverable): fake LLM unreachable" in caplog.text
    check_call_events(call.events)


async def test_an_llm_that_fails_before_the_turn_is_in_still_gets_the_turn_reported(
    vad_model: vad.VAD, caller: Recording, caplog: pytest.LogCaptureFixture
) -> None:
    """The answer begun ahead of the turn (preemptive generation) fails while the turn is still
    being decided: the apology waits for the turn, so the caller's words are reported (an
    apology at once made LiveKit skip the turn, and the words were lost)."""
    caplog.set_level(logging.INFO)
    overrides = {
        "turn_taking": {
            "aec_warmup": 0,
            "detection": "vad",
            "endpointing": {"min_delay": 1.5, "max_delay": 2.0},
        }
    }
    async with harness(vad_model, [caller.text("question")], agent_overrides=overrides) as call:
        call.llm.fail = True
        await ask(call, caller.clip("question"))
        ended = await call.wait_event(is_type("call_ended"), timeout=15)
    assert ended["reason"] == "error"
    finals = [(e["role"], e["text"]) for e in call.of_type("transcript") if e["final"]]
    said = [final for final in finals[1:] if final != ("agent", "")]  # the reply that never came
    assert said == [("user", caller.text("question")), ("agent", call.agent.messages.error_goodbye)]
    assert "the LLM failed before the caller's turn was in" in caplog.text
    check_call_events(call.events)


@pytest.mark.parametrize(
    ("payload", "sender", "topic", "logged"),
    [
        (b"not json", None, "voice-agent", "not acceptable JSON"),
        (b"\xff\xfe", None, "voice-agent", "not acceptable JSON"),
        (b'["end_call"]', None, "voice-agent", "expected a JSON object"),
        (b'{"type": 1}', None, "voice-agent", "'type' must be a string"),
        (b'{"type": "mute"}', None, "voice-agent", "unknown message type"),
        (b'{"type": "end_call", "pad": "' + b"x" * 16000 + b'"}', None, "voice-agent", "oversized"),
        (b'{"type": "end_call"}', "someone-else", "voice-agent", "only the caller"),
        (b'{"type": "end_call"}', None, "another-feature", None),
    ],
)
async def test_bad_control_messages_are_ignored(
    vad_model: vad.VAD,
    caplog: pytest.LogCaptureFixture,
    payload: bytes,
    sender: str | None,
    topic: str,
    logged: str | None,
) -> None:
    async with harness(vad_model, []) as call:
        await call.wait_event(is_type("transcript", role="agent"))
        call.transport.send_data(payload, sender=sender, topic=topic)
        await asyncio.sleep(0.5)
        assert not call.of_type("call_ended"), "the call goes on"
        if logged:
            assert logged in caplog.text
        call.transport.send_data(b'{"type":"end_call"}', topic="voice-agent")
        ended = await call.wait_event(is_type("call_ended"), timeout=1.0)
        assert ended["reason"] == "client_ended"
    check_call_events(call.events)
