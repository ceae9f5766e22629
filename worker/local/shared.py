"""Whisper and Piper once per worker, in LiveKit's inference process, asked by every call.

Loaded in each job process, the models cost every call ~320 MB (Whisper base ~200 MB, Piper
~120 MB), the pool's idle processes as much again, and each process warms them at start. LiveKit
already runs one inference process per worker for its own turn-detector model and relays
`JobContext.inference_executor.do_inference` to it; these runners put the local STT and TTS
there, so a call's process keeps only its VAD and end-of-turn model.

The main process names the models to load in `MODELS_ENV` before the server starts (the
runners are built without arguments in a process of their own). A request is a JSON header and
raw samples (`pack`); a failed or stuck one becomes an `APIError`, which the session handles as
any provider's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
import threading
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
from livekit.agents import APIConnectionError, APITimeoutError, get_job_context
from livekit.agents.inference_runner import _InferenceRunner

from worker.config import AgentRegistry, LocalSTT, LocalTTS
from worker.local.runtime import default_threads, local_entries
from worker.local.stt import Decoding, load_whisper, transcribe
from worker.local.tts import load_piper, render, voice_config

if TYPE_CHECKING:
    from faster_whisper import WhisperModel
    from livekit.agents.ipc.inference_executor import InferenceExecutor
    from piper import PiperVoice

logger = logging.getLogger("worker.local.shared")

MODELS_ENV = "_VOICE_WORKER_SHARED_MODELS"
"""Internal: how the main process tells the inference process what to load."""
WHISPER_METHOD = "voice_worker.whisper"
PIPER_METHOD = "voice_worker.piper"
TIMEOUT = 20.0
"""The longest a transcription or a sentence may take (Whisper base takes ~2 s a segment on a
slow 2-core machine): past it, or if the inference process died, the call's provider fails."""
MAX_HEADER = 4096
M = TypeVar("M")


@dataclass(frozen=True)
class SharedModels:
    """The local models the inference process holds: `None` is the bundled one."""

    whispers: tuple[str | None, ...] = ()
    voices: tuple[str | None, ...] = ()

    @classmethod
    def of(cls, registry: AgentRegistry) -> SharedModels:
        return cls(
            whispers=tuple(dict.fromkeys(e.model for e in local_entries(registry, LocalSTT))),
            voices=tuple(dict.fromkeys(e.voice for e in local_entries(registry, LocalTTS))),
        )

    @classmethod
    def from_env(cls) -> SharedModels:
        raw = json.loads(os.environ.get(MODELS_ENV) or "{}")
        return cls(whispers=tuple(raw.get("whispers", ())), voices=tuple(raw.get("voices", ())))

    def to_env(self) -> str:
        return json.dumps({"whispers": list(self.whispers), "voices": list(self.voices)})


def share_models(registry: AgentRegistry) -> bool:
    """In the main process, before the server is built: have its inference process load the
    agents' local STT and TTS models. False when no agent uses one."""
    models = SharedModels.of(registry)
    if not models.whispers and not models.voices:
        return False
    os.environ[MODELS_ENV] = models.to_env()
    for runner in (WhisperRunner, PiperRunner):
        if runner.INFERENCE_METHOD not in _InferenceRunner.registered_runners:
            _InferenceRunner.register_runner(runner)
    return True


def pack(header: dict[str, Any], payload: bytes = b"") -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<I", len(encoded)) + encoded + payload


def unpack(data: bytes) -> tuple[dict[str, Any], bytes]:
    """A request or response; ValueError if it is not one."""
    if len(data) < 4:
        raise ValueError("truncated inference message")
    (size,) = struct.unpack_from("<I", data)
    if size > MAX_HEADER or 4 + size > len(data):
        raise ValueError(f"inference message header of {size} bytes")
    header = json.loads(data[4 : 4 + size])
    if not isinstance(header, dict):
        raise ValueError("inference message header is not an object")
    return header, data[4 + size :]


# --- the inference process ----------------------------------------------------------------------


class _ModelRunner(_InferenceRunner, Generic[M]):
    """Answers requests for the models `SharedModels` names, each loaded (and warmed) once;
    a request names its model in the header's "model"."""

    def __init__(self) -> None:
        self._models: dict[str | None, M] = {}

    @abstractmethod
    def _names(self, models: SharedModels) -> tuple[str | None, ...]: ...

    @abstractmethod
    def _load(self, name: str | None) -> M: ...

    @abstractmethod
    def _answer(self, model: M, header: dict[str, Any], payload: bytes) -> bytes: ...

    def initialize(self) -> None:
        for name in self._names(SharedModels.from_env()):
            self._models[name] = self._load(name)
            logger.info("%s: loaded %s for every call", self.INFERENCE_METHOD, name or "bundled")

    def run(self, data: bytes) -> bytes | None:
        header, payload = unpack(data)
        model = self._models.get(header.get("model"))
        if model is None:
            raise ValueError(f"{self.INFERENCE_METHOD}: {header.get('model')!r} is not loaded")
        return self._answer(model, header, payload)


class WhisperRunner(_ModelRunner["WhisperModel"]):
    """Transcribes an utterance (float32 mono 16 kHz) with the named Whisper model."""

    INFERENCE_METHOD = WHISPER_METHOD

    def _names(self, models: SharedModels) -> tuple[str | None, ...]:
        return models.whispers

    def _load(self, name: str | None) -> WhisperModel:
        return load_whisper(name, threads=default_threads())

    def _answer(self, model: WhisperModel, header: dict[str, Any], payload: bytes) -> bytes:
        audio = np.frombuffer(payload, dtype=np.float32)
        decoding = Decoding(**header["decoding"])
        return pack({"text": transcribe(model, audio, str(header["language"]), decoding)})


class PiperRunner(_ModelRunner["PiperVoice"]):
    """Renders a text with the named Piper voice: int16 samples, one run per sentence."""

    INFERENCE_METHOD = PIPER_METHOD

    def __init__(self) -> None:
        super().__init__()
        # espeak-ng, which phonemizes for every voice, is not thread-safe; a sentence takes
        # tens of milliseconds, so calls queue briefly here instead
        self._lock = threading.Lock()

    def _names(self, models: SharedModels) -> tuple[str | None, ...]:
        return models.voices

    def _load(self, name: str | None) -> PiperVoice:
        return load_piper(name, threads=1)

    def _answer(self, model: PiperVoice, header: dict[str, Any], _payload: bytes) -> bytes:
        with self._lock:
            pieces = render(model, str(header["text"]), float(header["speed"]))
        return pack({"lengths": [len(p) for p in pieces]}, b"".join(p.tobytes() for p in pieces))


# --- a call's process ---------------------------------------------------------------------------


def _job_executor() -> InferenceExecutor:
    return get_job_context().inference_executor


async def _infer(
    executor: Callable[[], InferenceExecutor], method: str, request: bytes
) -> tuple[dict[str, Any], bytes]:
    try:
        response = await asyncio.wait_for(executor().do_inference(method, request), TIMEOUT)
    except TimeoutError:
        raise APITimeoutError(f"{method}: the inference process took over {TIMEOUT:g} s") from None
    except RuntimeError as exc:  # a failed inference, or no job (console without a worker)
        raise APIConnectionError(f"{method}: {exc}", retryable=False) from None
    if response is None:
        raise APIConnectionError(f"{method}: empty answer from the inference process")
    try:
        return unpack(response)
    except ValueError as exc:
        raise APIConnectionError(f"{method}: {exc}", retryable=False) from None


@dataclass(frozen=True)
class SharedWhisper:
    """A `Transcriber` backed by the worker's inference process."""

    model: str | None
    executor: Callable[[], InferenceExecutor] = _job_executor

    async def __call__(self, audio: np.ndarray, language: str, decoding: Decoding) -> str:
        header = {"model": self.model, "language": language, "decoding": asdict(decoding)}
        request = pack(header, audio.astype(np.float32, copy=False).tobytes())
        answer, _ = await _infer(self.executor, WHISPER_METHOD, request)
        return str(answer["text"])


class SharedPiper:
    """A `Renderer` backed by the worker's inference process."""

    def __init__(
        self, voice: str | None, executor: Callable[[], InferenceExecutor] = _job_executor
    ) -> None:
        self.voice = voice
        self.executor = executor
        self._sample_rate = int(voice_config(voice).sample_rate)

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    async def __call__(self, text: str, speed: float) -> list[np.ndarray]:
        request = pack({"model": self.voice, "text": text, "speed": speed})
        answer, samples = await _infer(self.executor, PIPER_METHOD, request)
        audio = np.frombuffer(samples, dtype=np.int16)
        lengths = [int(n) for n in answer["lengths"]]
        if sum(lengths) != len(audio):
            raise APIConnectionError(f"{PIPER_METHOD}: {len(audio)} samples for {sum(lengths)}")
        return np.split(audio, np.cumsum(lengths)[:-1]) if lengths else []
