#!/usr/bin/env bash
# Everything CI checks, in order; each test group is its own step. Run from the repository root
# after `bash setup.sh` (and `. .venv/bin/activate`). A step that fails, or a test group that
# collects nothing, stops the run with a non-zero exit.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s ===\n' "$*"; }

step "lint (ruff)"
ruff check .
ruff format --check .

step "types (mypy)"
mypy

for group in unit providers pipeline scenarios local api fuzz; do
    step "tests: $group"
    python -m pytest -m "$group" -p no:cacheprovider
done

# libwebrtc ignores loopback: the official clients and tests/lkserver meet on a veth interface
# in a private network namespace (tests/lkserver/README.md).
step "tests: e2e (private network namespace)"
python -m tests.lkserver.netns python -m pytest -m e2e -p no:cacheprovider

step "tests: load (calls cycling through one worker, same namespace)"
python -m tests.lkserver.netns python -m pytest -m load -p no:cacheprovider

step "tests: browser (the call page in Debian's chromium, same namespace)"
python -m tests.lkserver.netns python -m pytest -m browser -p no:cacheprovider

step "all checks passed"
