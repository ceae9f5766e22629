"""The local models' requests to the worker's inference process: their wire format, what the
main process registers, and what a call sees when the inference process fails or stalls."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from livekit.agents import APIConnectionError, APITimeoutError
from livekit.agents.inference_runner import _InferenceRunner

from tests.harness import make_agent
from worker.config import AgentRegistry
from worker.local import shared
from worker.local.shared import (
    PIPER_METHOD,
    WHISPER_METHOD,
    SharedModels,
    SharedPiper,
    SharedWhisper,
    pack,
    share_models,
    unpack,
)
from worker.local.stt import Decoding


class FakeExecutor:
    """An inference executor that answers with what `reply` returns for each request."""

    def __init__(self, reply: object) -> None:
        self.reply = reply
        self.requests: list[tuple[str, bytes]] = []

    async def do_inference(self, method: str, data: bytes) -> bytes | None:
        self.requests.append((method, data))
        if isinstance(self.reply, BaseException):
            raise self.reply
        if self.reply == "hang":
            await asyncio.sleep(3600)
        assert isinstance(self.reply, bytes | None)
        return self.reply


@pytest.fixture
def runners(monkeypatch: pytest.MonkeyPatch) -> dict[str, type[_InferenceRunner]]:
    registered: dict[str, type[_InferenceRunner]] = {}
    monkeypatch.setattr(_InferenceRunner, "registered_runners", registered)
    monkeypatch.delenv(shared.MODELS_ENV, raising=False)
    return registered


def test_a_message_is_a_json_header_and_raw_bytes() -> None:
    header, payload = unpack(pack({"text": "hi", "n": [1, 2]}, b"\x00\x01"))
    assert (header, payload) == ({"text": "hi", "n": [1, 2]}, b"\x00\x01")
    for bad in (b"", b"\x01\x00", b"\xff\xff\x00\x00{}", b"\x05\x00\x00\x00{}", pack([1])):  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="inference message"):
            unpack(bad)


def test_the_main_process_shares_only_the_local_models_the_agents_use(
    runners: dict[str, type[_InferenceRunner]],
) -> None:
    cloud = make_agent()
    assert not share_models(AgentRegistry([cloud]))
    assert runners == {}, "no inference process for cloud-only agents"

    local = make_agent(stt=[{"provider": "local"}], tts=[{"provider": "local"}])
    other = make_agent(id="other", stt=[{"provider": "local"}], tts=[{"provider": "elevenlabs"}])
    assert share_models(AgentRegistry([local, other]))
    assert set(runners) == {WHISPER_METHOD, PIPER_METHOD}
    assert SharedModels.from_env() == SharedModels(whispers=(None,), voices=(None,))
    assert share_models(AgentRegistry([local])), "registering twice is harmless"


async def test_whisper_asks_the_inference_process_with_the_agents_decoding() -> None:
    executor = FakeExecutor(pack({"text": "where is my order"}))
    whisper = SharedWhisper(None, executor=lambda: executor)
    audio = np.linspace(-0.5, 0.5, 1600, dtype=np.float32)
    text = await whisper(audio, "en", Decoding(beam_size=3))
    assert text == "where is my order"
    [(method, request)] = executor.requests
    header, payload = unpack(request)
    assert method == WHISPER_METHOD
    assert header == {
        "model": None,
        "language": "en",
        "decoding": {"beam_size": 3, "no_speech_threshold": 0.6, "log_prob_threshold": -1.0},
    }
    assert np.array_equal(np.frombuffer(payload, dtype=np.float32), audio)


async def test_piper_answers_are_split_back_into_sentences() -> None:
    first, second = np.arange(5, dtype=np.int16), np.arange(3, dtype=np.int16)
    executor = FakeExecutor(pack({"lengths": [5, 3]}, first.tobytes() + second.tobytes()))
    piper = SharedPiper(None, executor=lambda: executor)
    assert piper.sample_rate == 22050, "read from the voice's config, without loading it"
    pieces = await piper("Hello. Bye.", 1.2)
    assert [p.tolist() for p in pieces] == [first.tolist(), second.tolist()]
    assert unpack(executor.requests[0][1])[0] == {
        "model": None,
        "text": "Hello. Bye.",
        "speed": 1.2,
    }

    executor.reply = pack({"lengths": []})
    assert await piper("", 1.0) == []
    executor.reply = pack({"lengths": [5, 9]}, first.tobytes())
    with pytest.raises(APIConnectionError, match="5 samples for 14"):
        await piper("Hello.", 1.0)


@pytest.mark.parametrize(
    ("reply", "error", "message"),
    [
        (
            RuntimeError("inference of voice_worker.whisper failed: boom"),
            APIConnectionError,
            "boom",
        ),
        (None, APIConnectionError, "empty answer"),
        (b"\x00", APIConnectionError, "truncated"),
        ("hang", APITimeoutError, "took over"),
    ],
)
async def test_a_failed_or_stalled_inference_is_a_provider_error(
    monkeypatch: pytest.MonkeyPatch, reply: object, error: type[Exception], message: str
) -> None:
    monkeypatch.setattr(shared, "TIMEOUT", 0.05)
    whisper = SharedWhisper(None, executor=lambda: FakeExecutor(reply))
    with pytest.raises(error, match=message):
        await whisper(np.zeros(160, dtype=np.float32), "en", Decoding())


async def test_outside_a_job_the_shared_models_say_so() -> None:
    with pytest.raises(APIConnectionError, match=WHISPER_METHOD):
        await SharedWhisper(None)(np.zeros(160, dtype=np.float32), "en", Decoding())
