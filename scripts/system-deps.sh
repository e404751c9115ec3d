#!/usr/bin/env bash
# The programs the tests use besides Python packages: espeak-ng (speech data) and Chromium (browser tests).
# Missing ones are installed with apt-get when this runs as root on a machine that has it. Otherwise espeak-ng
# falls back to the library that the `speech` extra installs into the venv (espeakng-loader), and the browser tests
# skip, saying why. Stops with one line when speech cannot be rendered at all.
# Usage: scripts/system-deps.sh PYTHON   (the venv's python; `make test` passes it)
set -euo pipefail
PY=${1:?usage: scripts/system-deps.sh PYTHON}
missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if ((${#missing[@]})) && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } \
        || echo "apt-get could not install ${missing[*]}; using what the venv has" >&2
fi
if ! command -v espeak-ng >/dev/null 2>&1 && ! "$PY" -c "import espeakng_loader" 2>/dev/null; then
    echo "the tests need espeak-ng: run 'apt-get install espeak-ng' as root, or '$PY -m pip install espeakng-loader'" >&2
    exit 1
fi
if ! command -v chromium >/dev/null 2>&1; then
    echo "chromium is not installed (apt-get install chromium, as root): the browser tests will be skipped" >&2
fi
