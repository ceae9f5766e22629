"""Each agent's greeting, rendered by its voice once and played from disk after.

A call's first words are its greeting: the same text for every call of an agent whose call
context leaves its placeholders at their defaults, in the same voice. Rendering it for every call
puts the TTS's first byte (150-400 ms with a cloud voice, more with Piper on a busy machine)
between the caller joining and hearing anything, and bills the same characters again. So the
first call that says a text in a voice keeps what the voice rendered, and every later call of
the worker (any process: the cache is a directory) plays that file instead.

Only a whole rendering by the agent's first voice is kept: one cut by the caller, or rendered by a
fallback voice after the first failed, is not. A cache that cannot be read or written costs the
call nothing but the saving; it is logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import tts
from pydantic import BaseModel

from worker.audio_files import Audio, AudioFileError, read_wav, write_wav
from worker.config import AgentConfig
from worker.placeholders import placeholder_values

logger = logging.getLogger("worker.greetings")

FORMAT = 1
"""Part of every key: a change to what is stored makes new files, never misreads old ones."""


@dataclass(frozen=True)
class GreetingCache:
    """Greetings on disk, one WAV file per voice and text."""

    directory: Path

    def path(self, voices: Sequence[BaseModel], text: str) -> Path:
        """Where `text` in the first of `voices` (the agent's `tts` entries as they run) is kept;
        the whole chain is in the key, so a file is never played by an agent with other voices."""
        key = json.dumps(
            [FORMAT, [voice.model_dump(mode="json") for voice in voices], text], sort_keys=True
        )
        return self.directory / f"{hashlib.sha256(key.encode()).hexdigest()}.wav"

    def for_call(
        self, agent: AgentConfig, greeting: str, voice: tts.TTS[Any]
    ) -> tuple[Audio | None, GreetingCapture | None]:
        """`greeting` as kept, or else what keeps this call's rendering by `voice`; neither for a
        greeting that its call's placeholders made personal ("Hi Sam, ..."), which would make a
        file, holding a caller's name, per caller."""
        if greeting != agent.render(agent.greeting, placeholder_values(agent)):
            return None, None
        path = self.path(agent.tts, greeting)
        if (audio := self.load(path)) is not None:
            return audio, None
        return None, GreetingCapture(self, path, greeting, voice)

    def load(self, path: Path) -> Audio | None:
        """The kept greeting, or None when there is none (or it cannot be read, which is said)."""
        try:
            return read_wav(path)
        except AudioFileError as exc:
            if path.exists():
                logger.warning("greeting cache: %s; the greeting is rendered instead", exc)
            return None
        except OSError as exc:
            logger.warning("greeting cache: cannot read %s (%s)", path, exc)
            return None

    def save(self, path: Path, frames: Sequence[rtc.AudioFrame]) -> None:
        """Keep a whole rendering, written under a temporary name and renamed, so a reader in
        another process never sees half a file."""
        if not frames or len({(f.sample_rate, f.num_channels) for f in frames}) != 1:
            return
        if frames[0].num_channels != 1:
            return
        samples = np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in frames])
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=self.directory, suffix=".part")
            os.close(fd)
            try:
                write_wav(Path(temporary), samples, frames[0].sample_rate)
                Path(temporary).replace(path)
            finally:
                Path(temporary).unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("greeting cache: cannot write %s (%s)", self.directory, exc)


class GreetingCapture:
    """Watches one rendering through the call's TTS and keeps it if it was the whole greeting."""

    def __init__(
        self, cache: GreetingCache, path: Path, greeting: str, voice: tts.TTS[Any]
    ) -> None:
        self._cache = cache
        self._path = path
        self._greeting = greeting
        self._voice = voice
        self._voice_changed = False
        self._text: list[str] = []

    async def read(self, text: AsyncIterable[str]) -> AsyncIterator[str]:
        """`text` as the TTS reads it, noted: only a rendering of the greeting's words is kept."""
        async for chunk in text:
            self._text.append(chunk)
            yield chunk

    async def tee(
        self, frames: AsyncIterable[rtc.AudioFrame]
    ) -> AsyncGenerator[rtc.AudioFrame, None]:
        """`frames` as they come; kept once the TTS has rendered them all. A greeting cut short
        closes this generator at a `yield` (or cancels it), so nothing is kept."""
        kept: list[rtc.AudioFrame] = []
        self._voice.on("tts_availability_changed", self._on_availability_changed)
        try:
            async for frame in frames:
                kept.append(frame)
                yield frame
        finally:
            self._voice.off("tts_availability_changed", self._on_availability_changed)
        if self._voice_changed:
            logger.info("greeting cache: a fallback voice said the greeting; not kept")
        elif " ".join("".join(self._text).split()) != " ".join(self._greeting.split()):
            logger.debug("greeting cache: the first rendering was not the greeting; not kept")
        else:
            self._cache.save(self._path, kept)

    def _on_availability_changed(self, _event: object) -> None:
        self._voice_changed = True
