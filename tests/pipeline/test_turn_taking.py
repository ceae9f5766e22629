"""Turn-taking through the real session with the fakes: a caller who pauses mid-sentence is
heard out, acknowledgements over the agent neither stop it nor get answered, and a real
interruption still does (the timings themselves are `python -m bench.turn_taking`'s)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from livekit.agents import vad

from tests.fakes import FakeLLM, FakeSTT, FakeTTS, Reply
from tests.harness import FakeCallHarness, Recording, check_call_events, is_type, make_agent

LONG_ANSWER = (
    "Let me walk you through it. You can return any item within thirty days of delivery, as "
    "long as it is unused and in its original packaging. Print the label from your account, "
    "drop the parcel at any post office, and we refund the original payment method within "
    "five business days of receiving it. Exchanges ship for free within the country, and "
    "store credit is added to your account the same day the parcel reaches our warehouse."
)
LOUD = 1000.0
SILENT = 100.0


def call_with(vad_model: vad.VAD, answer: str = "Sure.", **agent: Any) -> FakeCallHarness:
    """A call whose STT finalises exactly what the test says, 150 ms after it is said."""
    stt = FakeSTT([], latency=0.15, endpoint_silence=None)
    llm = FakeLLM(lambda text: Reply(answer), ttft=0.3, token_interval=0.0)
    return FakeCallHarness(
        make_agent(**agent), vad_model=vad_model, stt=stt, llm=llm, tts=FakeTTS()
    )


def turn_taking(caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    """What the call's summary log line says of its turn-taking."""
    (summary,) = [r for r in caplog.records if r.getMessage().startswith("call ended:")]
    result: dict[str, Any] = summary.turn_taking  # type: ignore[attr-defined]
    return result


HESITANT = [f"h{i:02d}" for i in range(1, 25)]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("sentences", [HESITANT[i : i + 6] for i in range(0, 24, 6)], ids=str)
async def test_a_caller_pausing_mid_sentence_is_heard_out(
    vad_model: vad.VAD, sentences: list[str]
) -> None:
    hesitant = Recording.load("hesitant")
    async with call_with(vad_model) as call:
        await call.wait_event(is_type("transcript", role="agent"))  # the greeting
        for uid in sentences:
            mark = len(call.events)
            (_, first_end), (second_start, _) = await call.say(hesitant, uid)
            answer = await call.wait_event(is_type("transcript", role="agent"), after=mark)
            turn = call.events[mark : call.events.index(answer)]
            users = [e for e in turn if e["type"] == "transcript" and e["final"]]
            assert [e["text"] for e in users] == [hesitant.text(uid)], f"{uid}: one turn"
            in_pause = [
                e
                for e, t in zip(call.events, call.event_times, strict=True)
                if first_end < t < second_start and e["type"] == "agent_state"
            ]
            assert not any(e["state"] in ("thinking", "speaking") for e in in_pause), (
                f"{uid}: the agent started answering in the {hesitant.utterances[uid]['pause']}s "
                "pause"
            )
            assert call.agent_rms(first_end, second_start) < SILENT
        assert len(call.llm.instructions) >= len(sentences)
    check_call_events(call.events)


async def test_complete_short_answers_do_not_wait_for_more(
    vad_model: vad.VAD, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="worker")
    complete = Recording.load("complete_turns")
    async with call_with(vad_model) as call:
        await call.wait_event(is_type("transcript", role="agent"))
        for uid in ("c01", "c02", "c04"):  # "Yes.", "Saturday.", "Tomorrow morning works."
            mark = len(call.events)
            await call.say(complete, uid)
            await call.wait_event(is_type("transcript", role="agent"), after=mark)
    summary = turn_taking(caplog)
    assert summary["detection"] == "smart_turn"
    decisions = summary["end_of_turn"]
    assert decisions["decisions"] >= 3, "the model was asked at each turn"
    assert decisions["waited"] == 0, "and each was answered at the provider floor, no wait"
    assert decisions["model_ms_p50"] > 0


async def test_acknowledgements_neither_stop_the_agent_nor_get_answered(
    vad_model: vad.VAD, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="worker")
    question = Recording.load("complete_turns")
    acks = Recording.load("acknowledgements")
    async with call_with(vad_model, LONG_ANSWER) as call:
        await call.wait_event(is_type("transcript", role="agent"))
        mark = len(call.events)
        await call.say(question, "c05")
        await call.wait_event(is_type("agent_state", state="speaking"), after=mark)
        heard: list[tuple[float, float]] = []
        for uid in ("a01", "a02", "a09", "a04", "a06"):
            await asyncio.sleep(2.0)
            (span,) = await call.say(acks, uid)
            heard.append(span)
        answer = await call.wait_event(is_type("transcript", role="agent"), after=mark, timeout=40)
        assert answer["interrupted"] is False
        assert answer["text"] == LONG_ANSWER, "the same answer, played to its end"
        users = [e["text"] for e in call.of_type("transcript", role="user", final=True)]
        assert users == [question.text("c05")], "no acknowledgement became a turn"
        assert call.llm.requests == [question.text("c05")], "nor reached the LLM"
        for start, end in heard:
            assert call.agent_rms(start - 1.0, start) > LOUD, "the agent was talking"
            assert call.agent_rms(end + 0.8, end + 1.6) > LOUD, "and went on right after"
        interims = call.of_type("transcript", role="user", final=False)
        assert not any("yeah" in e["text"].lower() for e in interims), "nor shown as words"
    check_call_events(call.events)
    assert turn_taking(caplog)["acknowledgements"] == 5
    said = [r.getMessage() for r in caplog.records if "acknowledgement" in r.getMessage()]
    assert len(said) == 5
    assert all("resuming the agent's speech" in line for line in said)


async def test_a_real_interruption_after_an_acknowledgement_still_stops_the_agent(
    vad_model: vad.VAD,
) -> None:
    question = Recording.load("complete_turns")
    acks, interruptions = Recording.load("acknowledgements"), Recording.load("interruptions")
    async with call_with(vad_model, LONG_ANSWER) as call:
        await call.wait_event(is_type("transcript", role="agent"))
        mark = len(call.events)
        await call.say(question, "c05")
        await call.wait_event(is_type("agent_state", state="speaking"), after=mark)
        await asyncio.sleep(1.5)
        await call.say(acks, "a03")  # "Okay."
        await asyncio.sleep(2.0)
        ((cut_in, _),) = await call.say(interruptions, "i01")  # "Wait."
        answer = await call.wait_event(is_type("transcript", role="agent"), after=mark)
        assert answer["interrupted"] is True
        assert LONG_ANSWER.startswith(answer["text"].rstrip())
        assert call.agent_rms(cut_in - 1.0, cut_in) > LOUD
        assert call.agent_rms(cut_in + 0.5, cut_in + 1.5) < SILENT, "the agent stopped at once"
        user = await call.wait_event(
            is_type("transcript", role="user", final=True), after=call.events.index(answer)
        )
        assert user["text"] == interruptions.text("i01")
        assert call.llm.requests[-1] == interruptions.text("i01"), "and it is answered"
    check_call_events(call.events)


async def test_with_acknowledgements_off_a_yeah_interrupts_as_before(
    vad_model: vad.VAD, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="worker")
    question, acks = Recording.load("complete_turns"), Recording.load("acknowledgements")
    off = {"aec_warmup": 0, "acknowledgements": {"enabled": False}}
    async with call_with(vad_model, LONG_ANSWER, turn_taking=off) as call:
        await call.wait_event(is_type("transcript", role="agent"))
        mark = len(call.events)
        await call.say(question, "c05")
        await call.wait_event(is_type("agent_state", state="speaking"), after=mark)
        await asyncio.sleep(1.5)
        await call.say(acks, "a01")
        answer = await call.wait_event(is_type("transcript", role="agent"), after=mark)
        assert answer["interrupted"] is True
    assert "acknowledgements" not in turn_taking(caplog)
