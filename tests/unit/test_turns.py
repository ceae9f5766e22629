"""Turn-taking logic without a session: word lists, the acknowledgement filter's decisions, the
end-of-turn detector's two signals, the model's installation checks and its fallback."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import LanguageCode, llm, stt
from livekit.agents.voice.agent_activity import AgentActivity

from tests.harness import make_agent
from worker.config import AgentRegistry
from worker.local.model_files import LocalModelError, mark_verified
from worker.providers import resolve
from worker.turns import detector as detector_module
from worker.turns import smart_turn
from worker.turns.barge_in import AcknowledgementFilter, resume_paused_speech
from worker.turns.detector import AudioTap, EndOfTurnDetector, ModelRunner
from worker.turns.phrases import (
    PhraseSet,
    default_acknowledgements,
    default_goodbyes,
    ends_mid_sentence,
    words,
)

KEYS = {"DEEPGRAM_API_KEY": "dg", "OPENAI_API_KEY": "sk", "ELEVEN_API_KEY": "el"}

# --- word lists -------------------------------------------------------------------------------


def test_transcripts_compare_as_plain_words() -> None:
    assert words("Uh-huh.") == ("uh", "huh")
    assert words("Mm—hmm, OKAY!") == ("mm", "hmm", "okay")
    assert words("d'accord") == ("d'accord",)
    assert words(" ... ") == ()


@pytest.mark.parametrize(
    "text",
    ["Yeah.", "uh huh", "Uh-huh.", "Mm-hmm.", "mhm", "Okay, got it.", "yeah yeah yeah", "I see."],
)
def test_acknowledgements(text: str) -> None:
    phrases = default_acknowledgements("en-US")
    assert phrases is not None
    assert phrases.is_acknowledgement(text)
    assert phrases.could_become_acknowledgement(text)


@pytest.mark.parametrize(
    "text",
    [
        "Yeah, but wait.",
        "No.",
        "Stop.",
        "What?",
        "Okay so what about shipping?",
        "yeah yeah yeah yeah",  # more than three in a row is somebody taking the floor
        "",
    ],
)
def test_not_acknowledgements(text: str) -> None:
    phrases = default_acknowledgements("en")
    assert phrases is not None
    assert not phrases.is_acknowledgement(text)


@pytest.mark.parametrize(
    "text",
    [
        "Goodbye.",
        "Good-bye!",
        "Thank you for your help, goodbye.",
        "Great, that is all. Thank you, goodbye.",
        "No, that's all, thanks. Bye!",
        "Okay, bye then.",
        "Thanks, you too. Have a nice day!",
        "Um, no thank you, that's it.",
        "Okay, I'll try that. Thank you, goodbye.",  # the last sentence closes the call
    ],
)
def test_goodbyes(text: str) -> None:
    goodbyes = default_goodbyes("en-GB")
    assert goodbyes is not None
    assert goodbyes.is_goodbye(text)


@pytest.mark.parametrize(
    "text",
    [
        "I want to say goodbye to my old plan.",  # a request that holds a goodbye
        "That's all I wanted to ask about my order?",
        "Okay, thanks.",  # thanks alone: the caller may go on
        "No.",
        "Bye the way, where is my parcel?",
        "Goodbye. Oh wait, one more thing?",  # the caller goes on after it
        "I'll try that. Thanks.",  # thanks alone, even last
        "Goodbye goodbye goodbye goodbye goodbye goodbye goodbye",  # more than six parts
        "",
    ],
)
def test_not_goodbyes(text: str) -> None:
    goodbyes = default_goodbyes("en")
    assert goodbyes is not None
    assert not goodbyes.is_goodbye(text)


def test_the_beginning_of_an_acknowledgement_may_become_one() -> None:
    phrases = PhraseSet(["uh huh", "got it", "okay"])
    assert phrases.could_become_acknowledgement("uh")
    assert phrases.could_become_acknowledgement("okay got")
    assert not phrases.could_become_acknowledgement("uh what")
    assert not phrases.could_become_acknowledgement("")


@pytest.mark.parametrize(
    "text",
    [
        "My account number is",
        "I would like to change my",
        "Can you send it to",
        "Can you send the invoice to?",  # a transcriber's question mark on a cut-off sentence
        "I was wondering if",
        "My name is John and I",
        "The order was placed on",
        "The tracking number ends in",
        "Could you tell me",
        "I would like to cancel",
        "Please send me",
        "So, um",
        "I need",
    ],
)
def test_sentences_that_stopped_in_the_middle(text: str) -> None:
    assert ends_mid_sentence(text, "en-US")


@pytest.mark.parametrize(
    "text",
    [
        "Yes, it is.",
        "Who am I talking to?",
        "That's what I was looking for.",
        "Please hold on.",
        "I can't log in.",
        "Can you turn it on?",
        "Come in.",
        "Let me check.",
        "Can you help me?",
        "What can you tell me?",
        "I need to go.",
        "Please cancel it.",
        "Saturday.",
        "Yes.",
        "Thank you, goodbye.",
        "",
    ],
)
def test_sentences_that_ended(text: str) -> None:
    assert not ends_mid_sentence(text, "en")


def test_other_languages_use_their_own_short_lists() -> None:
    assert ends_mid_sentence("Quiero cambiar la dirección y", "es")
    assert not ends_mid_sentence("Sí, es correcto.", "es")
    assert not ends_mid_sentence("I would like to change my", "ja"), "no list: the model decides"


# --- the acknowledgement filter -------------------------------------------------------------------


def event(kind: stt.SpeechEventType, text: str) -> stt.SpeechEvent:
    return stt.SpeechEvent(
        type=kind, alternatives=[stt.SpeechData(language=LanguageCode("en"), text=text)]
    )


FINAL, INTERIM = stt.SpeechEventType.FINAL_TRANSCRIPT, stt.SpeechEventType.INTERIM_TRANSCRIPT


class Resumes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> bool:
        self.count += 1
        return True


def over_the_agent() -> tuple[AcknowledgementFilter, Resumes]:
    """A filter whose caller has just started talking over the agent, which paused."""
    resumes = Resumes()
    phrases = default_acknowledgements("en")
    assert phrases is not None
    barge_in = AcknowledgementFilter(phrases, resume=resumes)
    barge_in.agent_state("speaking")
    barge_in.caller_speaking()
    barge_in.agent_state("listening")  # LiveKit paused the agent at the caller's first sound
    return barge_in, resumes


async def test_an_acknowledgement_is_held_then_dropped_and_the_agent_resumes() -> None:
    barge_in, resumes = over_the_agent()
    assert barge_in.process(event(INTERIM, "yeah")) == []
    assert barge_in.process(event(FINAL, "Yeah.")) == []
    assert resumes.count == 0, "not while the caller may go on"
    barge_in.caller_silent()
    await asyncio.sleep(0)  # after LiveKit's own end-of-speech handling
    assert resumes.count == 1
    assert barge_in.acknowledged == ["Yeah."]


async def test_a_late_final_acknowledgement_resumes_at_once() -> None:
    barge_in, resumes = over_the_agent()
    barge_in.caller_silent()  # Whisper: the words come after the end of speech
    await asyncio.sleep(0)
    assert resumes.count == 0
    assert barge_in.process(event(FINAL, "Uh-huh.")) == []
    assert resumes.count == 1


def test_anything_else_is_released_in_order_and_interrupts() -> None:
    barge_in, resumes = over_the_agent()
    first, interim, second = event(FINAL, "Yeah."), event(INTERIM, "ok"), event(FINAL, "ok, wait")
    assert barge_in.process(first) == []
    assert barge_in.process(interim) == [], "'yeah ok' is still an acknowledgement"
    assert barge_in.process(second) == [first, interim, second], "all held, then the new words"
    later = event(FINAL, "okay")
    assert barge_in.process(later) == [later], "the rest of a real interruption passes"
    assert resumes.count == 0
    assert barge_in.acknowledged == []


def test_an_interim_that_cannot_become_an_acknowledgement_passes_at_once() -> None:
    barge_in, _ = over_the_agent()
    stop = event(INTERIM, "stop")
    assert barge_in.process(stop) == [stop]


def test_words_while_the_agent_is_silent_are_a_turn() -> None:
    resumes = Resumes()
    barge_in = AcknowledgementFilter(PhraseSet(["yeah"]), resume=resumes)
    barge_in.agent_state("listening")
    barge_in.caller_speaking()
    yeah = event(FINAL, "Yeah.")
    assert barge_in.process(yeah) == [yeah], "an answer to the agent's question"


def test_non_text_events_always_pass() -> None:
    barge_in, _ = over_the_agent()
    start = stt.SpeechEvent(type=stt.SpeechEventType.START_OF_SPEECH)
    assert barge_in.process(start) == [start]


def test_the_resume_uses_livekits_false_interruption_path() -> None:
    """The one private LiveKit call the worker makes: pinned here so an upgrade that moves it
    fails this test instead of silently slowing acknowledgements to the timeout."""
    assert callable(AgentActivity._start_false_interruption_timer)

    class Activity:
        def __init__(self, paused: object) -> None:
            self._paused_speech = paused
            self.timers: list[float] = []

        def _start_false_interruption_timer(self, timeout: float) -> None:
            self.timers.append(timeout)

    class Session:
        def __init__(self, activity: Activity | None) -> None:
            self._activity = activity

    paused = Activity(paused=object())
    assert resume_paused_speech(Session(paused))  # type: ignore[arg-type]
    assert paused.timers == [0.0], "resumed now, not after the timeout"
    assert not resume_paused_speech(Session(Activity(paused=None))), "nothing paused"  # type: ignore[arg-type]
    assert not resume_paused_speech(Session(None))  # type: ignore[arg-type]


# --- the end-of-turn detector ---------------------------------------------------------------------


class FakeModel:
    """Stands in for Smart Turn: a fixed probability, optional delay or failure; records what
    it heard."""

    def __init__(self, probability: float, *, delay: float = 0.0, fail: bool = False) -> None:
        self.value, self.delay, self.fail = probability, delay, fail
        self.heard: list[np.ndarray] = []
        self.answered = threading.Event()

    def probability(self, audio: np.ndarray) -> float:
        self.heard.append(audio)
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("onnxruntime: bad input")
        self.answered.set()
        return self.value


def detector(model: FakeModel, voice_max_delay: float = 1.0) -> EndOfTurnDetector:
    return EndOfTurnDetector(
        ModelRunner(model),  # type: ignore[arg-type]
        language="en",
        vad_silence=0.3,
        voice_max_delay=voice_max_delay,
    )


def said(text: str) -> llm.ChatContext:
    ctx = llm.ChatContext()
    ctx.add_message(role="assistant", content="How can I help?")
    ctx.add_message(role="user", content=text)
    return ctx


def frame(seconds: float, rate: int = 16000, level: int = 3000) -> rtc.AudioFrame:
    samples = np.full(int(seconds * rate), level, dtype=np.int16)
    return rtc.AudioFrame(samples.tobytes(), rate, 1, len(samples))


async def test_a_sentence_cut_mid_way_waits_without_asking_the_model() -> None:
    model = FakeModel(0.99)
    turns = detector(model)
    probability = await turns.predict_end_of_turn(said("My account number is"))
    assert probability < await turns.unlikely_threshold(None)
    assert model.heard == []
    assert turns.decisions[-1].reason == "mid-sentence"


async def test_otherwise_the_model_hears_the_turn_up_to_just_after_its_last_word() -> None:
    model = FakeModel(0.8)
    turns = detector(model)
    now = time.time()
    for i in range(30):  # 3 s of audio, 100 ms frames, the last one arriving now
        turns.tap.push(frame(0.1), at=now - 2.9 + i * 0.1)
    turns.caller_speaking(now - 2.5)
    turns.caller_silent(now)  # the VAD's end of speech: the words ended 0.3 s ago
    turns.stt_accounted(now - 0.3, words=True)  # the transcript of them
    probability = await turns.predict_end_of_turn(said("It arrived broken."))
    assert probability == 0.8
    (heard,) = model.heard
    # from 0.5 s before the first speech to 0.2 s after the last word: 2.5 + 0.5 - 0.3 + 0.2
    assert abs(len(heard) / 16000 - 2.9) < 0.02
    await turns.predict_end_of_turn(said("It arrived broken. Yesterday."))
    assert len(model.heard) == 1, "a later transcript of the same speech reuses the verdict"
    assert turns.summary()["decisions"] == 2


async def test_when_only_the_voice_doubts_the_wait_is_voice_max_delay_after_the_last_word() -> None:
    turns = detector(FakeModel(0.1), voice_max_delay=0.6)
    turns.tap.push(frame(1.0))
    turns.caller_speaking(time.time() - 1.0)
    turns.caller_silent(time.time())  # the words ended 0.3 s ago: 0.3 s more to wait
    turns.stt_accounted(time.time() - 0.3, words=True)
    started = time.monotonic()
    probability = await turns.predict_end_of_turn(said("I want a refund."))
    assert time.monotonic() - started >= 0.25, "it waited for more speech"
    assert probability >= await turns.unlikely_threshold(None), "then the turn is complete"
    assert not turns.decisions[-1].complete, "counted as a wait in the call's summary"


async def test_speech_during_the_voices_wait_cancels_it() -> None:
    model = FakeModel(0.1)
    turns = detector(model, voice_max_delay=10.0)
    turns.tap.push(frame(1.0))
    turns.caller_silent(time.time())
    deciding = asyncio.create_task(turns.predict_end_of_turn(said("I want a refund.")))
    assert await asyncio.to_thread(model.answered.wait, 10), "the model has answered"
    await asyncio.sleep(0.1)
    assert not deciding.done(), "the detector is waiting for more speech"
    deciding.cancel()  # what LiveKit does when the VAD hears the caller again
    with pytest.raises(asyncio.CancelledError):
        await deciding


async def test_words_the_stt_still_owes_are_waited_for_not_judged_without() -> None:
    """The caller resumed after a pause before the first half's transcript came (Whisper takes
    about a second): deciding on "check on my" alone split the sentence."""
    model = FakeModel(0.99)
    turns = detector(model)
    now = time.time()
    turns.tap.push(frame(3.0))
    turns.caller_speaking(now - 3.0)  # "Hi, I would like to check on my"
    turns.caller_silent(now - 1.7)
    turns.caller_speaking(now - 1.2)  # "order, please."
    turns.caller_silent(now)
    turns.stt_accounted(now - 2.0, words=True)  # only the first half is transcribed
    deciding = asyncio.create_task(
        turns.predict_end_of_turn(said("I would like to check on mine."))
    )
    await asyncio.sleep(0.2)
    assert not deciding.done()
    assert model.heard == [], "no decision on half the words"
    turns.stt_accounted(now - 0.3, words=True)  # the second half arrives ...
    await asyncio.sleep(0.2)
    assert not deciding.done()
    assert model.heard == [], "... and the session asks again with it"
    deciding.cancel()  # what LiveKit does with the new transcript
    with pytest.raises(asyncio.CancelledError):
        await deciding
    assert await turns.predict_end_of_turn(said("... mine. Order, please.")) == 0.99


def first_half_heard(model: FakeModel) -> tuple[EndOfTurnDetector, float]:
    """A caller who spoke for 1.3 s, paused, and whose words so far are transcribed."""
    turns = detector(model)
    now = time.time()
    turns.tap.push(frame(3.0))
    turns.caller_speaking(now - 3.0)  # "Hi, I would like to check on my"
    turns.caller_silent(now - 1.7)
    turns.stt_accounted(now - 2.0, words=True)
    return turns, now


async def test_speech_the_stt_found_no_words_in_holds_nothing() -> None:
    model = FakeModel(0.99)
    turns, now = first_half_heard(model)
    turns.caller_speaking(now - 1.0)  # a cough
    turns.caller_silent(now)
    deciding = asyncio.create_task(turns.predict_end_of_turn(said("It arrived broken.")))
    await asyncio.sleep(0.1)
    assert not deciding.done()
    turns.stt_accounted(now, words=False)  # Whisper heard the cough: no words
    assert await asyncio.wait_for(deciding, 5) == 0.99


async def test_a_transcript_that_never_comes_is_waited_for_only_so_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(detector_module, "TRANSCRIPT_WAIT", 0.5)
    model = FakeModel(0.99)
    turns = detector(model)
    turns.tap.push(frame(1.0))
    turns.caller_speaking(time.time() - 1.0)
    turns.caller_silent(time.time())  # the words ended 0.3 s ago, none transcribed
    assert await asyncio.wait_for(turns.predict_end_of_turn(said("Hello.")), 5) == 0.99
    assert len(model.heard) == 1, "judged on what it has"


async def test_a_recognition_in_progress_is_waited_for_past_the_transcript_ceiling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whisper on a slow machine, the second half queued behind the first: its transcript came
    3.2 s after the last word, and judging the first half alone at 3.0 s split the sentence."""
    monkeypatch.setattr(detector_module, "TRANSCRIPT_WAIT", 0.3)
    model = FakeModel(0.99)
    turns, now = first_half_heard(model)  # "Hi, I would like to check on mine."
    turns.caller_speaking(now - 1.2)  # "order, please."
    turns.caller_silent(now)
    turns.stt_recognizing(now - 0.3)  # the STT's VAD cut it and Whisper is on it
    deciding = asyncio.create_task(turns.predict_end_of_turn(said("... check on mine.")))
    await asyncio.sleep(0.6)  # past TRANSCRIPT_WAIT after the last word
    assert not deciding.done()
    assert model.heard == [], "no decision on half the words"
    turns.stt_accounted(now - 0.3, words=False)  # it found no words after all
    assert await asyncio.wait_for(deciding, 5) == 0.99


async def test_the_tap_resamples_and_passes_audio_through() -> None:
    tap = AudioTap()

    async def frames() -> object:
        for _ in range(5):
            yield frame(0.1, rate=48000)

    passed = [f async for f in tap.tee(frames())]  # type: ignore[arg-type]
    assert len(passed) == 5
    now = time.time()
    assert abs(len(tap.window(now - 10, now)) - 8000) < 400, "0.5 s at 16 kHz, burst or not"
    assert abs(len(tap.window(now - 10, now - 0.2)) - 4800) < 400


@pytest.mark.parametrize(
    ("model", "reason"),
    [(FakeModel(0.1, delay=1.5), "timeout"), (FakeModel(0.1, fail=True), "error")],
)
async def test_a_slow_or_broken_model_never_holds_the_turn(
    model: FakeModel, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    turns = detector(model)
    turns.tap.push(frame(1.0))
    with caplog.at_level(logging.WARNING, logger="worker.turns"):
        probability = await turns.predict_end_of_turn(said("It arrived broken."))
    assert probability >= await turns.unlikely_threshold(None), "answered"
    assert turns.decisions[-1].reason == reason
    assert "end-of-turn model" in caplog.text


# --- the model file -----------------------------------------------------------------------------


def test_the_model_must_be_installed_and_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_MODEL_CACHE", str(tmp_path))
    monkeypatch.delenv(smart_turn.MODEL_ENV, raising=False)
    with pytest.raises(LocalModelError, match="python -m worker setup") as missing:
        smart_turn.model_path()
    assert str(tmp_path / "smart-turn" / smart_turn.MODEL_NAME) in str(missing.value)
    path = smart_turn.bundled_model_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x" * smart_turn.MODEL_SIZE)
    mark_verified(path, "0" * 64)
    with pytest.raises(LocalModelError, match="missing or unverified"):
        smart_turn.model_path()
    mark_verified(path, smart_turn.MODEL_SHA256)
    assert smart_turn.model_path() == path


def test_a_model_of_your_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(smart_turn.MODEL_ENV, str(tmp_path / "mine.onnx"))
    with pytest.raises(LocalModelError, match=r"WORKER_TURN_MODEL=.*mine\.onnx: no such file"):
        smart_turn.model_path()
    (tmp_path / "mine.onnx").write_bytes(b"onnx")
    assert smart_turn.model_path() == tmp_path / "mine.onnx"


def test_without_the_model_agents_end_turns_on_silence_said_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_MODEL_CACHE", str(tmp_path))
    monkeypatch.delenv(smart_turn.MODEL_ENV, raising=False)
    model = make_agent(id="with-model", source="prompts/a.md")
    silence = make_agent(id="on-silence", source="prompts/b.md", turn_taking={"detection": "vad"})
    resolution = resolve(AgentRegistry([model, silence]), KEYS, allow_local=False)
    assert not resolution.problems, "a missing turn model never stops the worker"
    (note,) = resolution.fallbacks
    assert note.startswith("prompts/a.md: turn_taking.detection: smart_turn: the Smart Turn model")
    assert note.endswith("ending turns after 0.3s of silence (vad) instead")
    assert [a.turn_taking.detection for a in resolution.registry] == ["vad", "vad"]


def test_features_are_whisper_log_mels_of_the_last_eight_seconds() -> None:
    tone = (3000 * np.sin(np.arange(16000 * 10) * 2 * np.pi * 440 / 16000)).astype(np.int16)
    features = smart_turn.log_mel(tone)
    assert features.shape == (80, 800)
    assert features.dtype == np.float32
    assert np.array_equal(features, smart_turn.log_mel(tone[-smart_turn.WINDOW :]))
    short = smart_turn.log_mel(tone[:8000])
    assert short[:, :700].std() < 1e-6, "a short turn is padded with silence in front"
    assert short[:, -40:].std() > 0.01


def straightforward_log_mel(audio: np.ndarray) -> np.ndarray:
    """Whisper's log-mel of the last 8 s, every frame transformed (what `log_mel` shortcuts)."""
    x = (audio.astype(np.float32) / 32768.0)[-smart_turn.WINDOW :]
    x = np.pad(x, (smart_turn.WINDOW - len(x), 0))
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    padded = np.pad(x.astype(np.float64), 200, mode="reflect")
    frames = np.stack([padded[i : i + 400] for i in range(0, len(padded) - 399, 160)])
    power = np.abs(np.fft.rfft(frames * (np.hanning(401)[:-1]), axis=-1)) ** 2
    mel = np.log10(np.maximum(power @ smart_turn._mel_filters(), 1e-10))[:-1].T
    mel = np.maximum(mel, mel.max() - 8.0)
    features: np.ndarray = ((mel + 4.0) / 4.0).astype(np.float32)
    return features


@pytest.mark.parametrize("samples", [1, 199, 200, 201, 361, 16000, 127_999, 128_000, 200_000])
def test_the_silence_shortcut_changes_no_feature(samples: int) -> None:
    audio = (np.random.default_rng(samples).standard_normal(samples) * 2000).astype(np.int16)
    assert np.allclose(smart_turn.log_mel(audio), straightforward_log_mel(audio), atol=1e-5)
