"""Reading and writing the recordings `simulate` plays and produces."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from worker.audio_files import AudioFileError, read_wav, write_wav
from worker.simulate import AGENT_RATE


def wav(path: Path, samples: np.ndarray, *, rate: int, channels: int, width: int = 2) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


def test_stereo_recordings_are_mixed_to_mono_at_their_own_rate(tmp_path: Path) -> None:
    left = np.full(4410, 1000, dtype=np.int16)
    right = np.full(4410, 3000, dtype=np.int16)
    stereo = np.stack([left, right], axis=1).reshape(-1)
    recording = read_wav(wav(tmp_path / "s.wav", stereo, rate=44100, channels=2))
    assert recording.rate == 44100
    assert recording.duration == pytest.approx(0.1)
    assert set(recording.samples.tolist()) == {2000}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b"RIFF....WAVEjunk"), "not a PCM WAV file"),
        (lambda p: wav(p, np.zeros(10, np.uint8), rate=8000, channels=1, width=1), "8-bit"),
        (lambda p: wav(p, np.zeros(0, np.int16), rate=16000, channels=1), "holds no audio"),
    ],
)
def test_unusable_files_are_refused(tmp_path: Path, make: object, message: str) -> None:
    path = tmp_path / "bad.wav"
    make(path)  # type: ignore[operator]
    with pytest.raises(AudioFileError, match=message):
        read_wav(path)


def test_agent_audio_round_trips(tmp_path: Path) -> None:
    samples = (np.sin(np.arange(2400) / 10) * 8000).astype(np.int16)
    write_wav(tmp_path / "a.wav", samples, AGENT_RATE)
    back = read_wav(tmp_path / "a.wav")
    assert back.rate == AGENT_RATE
    assert np.array_equal(back.samples, samples)
