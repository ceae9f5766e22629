"""Suite-wide settings: hypothesis profiles, and no silently skipped tests under CI."""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest
from hypothesis import settings

# CI must be reproducible and must not flake on a slow, shared 2-core machine.
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=300)
settings.register_profile("dev", deadline=None, max_examples=100)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")

# The fast plumbing tests run the bundled SmolLM2 (load < 1 s, 100 MB); the tests of the default
# 1.5B ask for it by name. Set before anything reads it, and inherited by the worker processes.
os.environ.setdefault("WORKER_LOCAL_LLM", "smollm2-135m")


TESTS = Path(__file__).resolve().parent
GROUPS = (
    "unit",
    "pipeline",
    "local",
    "providers",
    "scenarios",
    "api",
    "fuzz",
    "e2e",
    "load",
    "browser",
)
"""Each top-level directory of tests/ is a group, with a marker of the same name."""


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        group = item.path.resolve().relative_to(TESTS).parts[0]
        if group not in GROUPS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in one of tests/{GROUPS}")
        item.add_marker(getattr(pytest.mark, group))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """Under CI=true a skipped test fails: there, a skip means a missing install step."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true (not allowed): {report.longrepr}"


pytest_plugins = ["pytester"]  # tests/unit/test_suite_rules.py checks the rules above
