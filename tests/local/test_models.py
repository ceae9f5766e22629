"""The bundled models: assembled once, verified, and only those the agents use are loaded."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.harness import make_agent
from worker.call.pipeline import load_vad
from worker.config import AgentRegistry
from worker.local.runtime import LocalRuntime
from worker.local.stt import BUNDLED_SHA256, BUNDLED_SIZE, ensure_bundled_model
from worker.settings import VADSettings


def test_the_bundled_whisper_model_is_assembled_once_and_verified(tmp_path: Path) -> None:
    target = ensure_bundled_model(tmp_path / "whisper")
    model = target / "model.bin"
    assert model.stat().st_size == BUNDLED_SIZE
    assert hashlib.sha256(model.read_bytes()).hexdigest() == BUNDLED_SHA256
    assert {p.name for p in target.iterdir()} == {
        "model.bin",
        "model.bin.sha256",
        "config.json",
        "tokenizer.json",
        "vocabulary.txt",
    }
    assembled_at = model.stat().st_mtime_ns
    ensure_bundled_model(target)
    assert model.stat().st_mtime_ns == assembled_at, "a verified model is not rebuilt"
    (target / "model.bin.sha256").write_text("damaged\n")
    ensure_bundled_model(target)
    assert model.stat().st_mtime_ns != assembled_at, "an unverified model is rebuilt"


def test_a_process_loads_only_the_local_models_its_agents_use() -> None:
    agent = make_agent(stt=[{"provider": "local"}], tts=[{"provider": "elevenlabs"}])
    runtime = LocalRuntime.load(
        AgentRegistry([agent]), vad_model=load_vad(VADSettings()), llm_url=None
    )
    assert list(runtime.whispers) == [None]
    assert runtime.voices == {}
