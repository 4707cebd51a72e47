#!/usr/bin/env bash
# Set up fedstore in ./.venv and run its main job on the embedded default backend (filesystem).
#   bash scripts/demo.sh [fedstore demo options]
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(command -v python3.11 || command -v python3)
if [ ! -x .venv/bin/fedstore ]; then
  "$py" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q ".[demo]"
fi
exec .venv/bin/fedstore demo "$@"
