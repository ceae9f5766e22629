"""WAV files in and out: caller recordings for `simulate`, pre-rendered agent clips.

No LiveKit here: agent files check their clips with it, and `route` / `agents` load agent files.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BUNDLED_APOLOGY = Path(__file__).resolve().parent / "assets" / "error_goodbye.wav"
"""The default `error_goodbye` line in the bundled Piper voice (see `clips.py`)."""
MAX_CLIP_SECONDS = 15.0


class AudioFileError(ValueError):
    """An audio file that cannot be used; the message is one line naming the file."""


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # int16 mono
    rate: int

    @property
    def duration(self) -> float:
        return len(self.samples) / self.rate


def read_wav(path: Path) -> Audio:
    """A PCM WAV file as int16 mono samples (stereo is mixed down)."""
    if not path.is_file():
        raise AudioFileError(f"{path}: no such file")
    try:
        with wave.open(str(path)) as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise AudioFileError(f"{path}: not a PCM WAV file ({exc})") from None
    if width != 2:
        raise AudioFileError(f"{path}: {8 * width}-bit samples; 16-bit PCM is supported")
    samples = np.frombuffer(frames, dtype=np.int16)
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).astype(np.int16)
    if not len(samples):
        raise AudioFileError(f"{path}: the file holds no audio")
    return Audio(samples, rate)


def check_clip(path: Path) -> None:
    """Raise `AudioFileError` unless `path` is a usable clip (called at worker start)."""
    audio = read_wav(path)
    if audio.duration > MAX_CLIP_SECONDS:
        raise AudioFileError(f"{path}: {audio.duration:.1f}s long; a clip is at most 15s")


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype(np.int16).tobytes())
