#!/usr/bin/env bash
# Set up and run fedstore's whole test suite: tox on Python 3.11, 3.12, 3.13, lint, and the
# PyTorch example (env torch: Python 3.11 with the CPU build of torch).
#   bash scripts/test.sh            # interpreters this machine lacks are skipped
#   bash scripts/test.sh --ci       # every interpreter must be present (what CI runs)
#   bash scripts/test.sh -e py311   # extra arguments go to tox
set -euo pipefail
cd "$(dirname "$0")/.."

ci=0
if [ "${1:-}" = "--ci" ]; then ci=1; shift; fi

# pyenv installs 3.12 and 3.13 without putting them on PATH: add every one present.
if command -v pyenv >/dev/null 2>&1; then
  for v in $(pyenv versions --bare 2>/dev/null); do
    case "$v" in 3.11*|3.12*|3.13*) PATH="$PATH:$(pyenv root)/versions/$v/bin" ;; esac
  done
  export PATH
fi

py=$(command -v python3.11 || command -v python3)
if [ ! -x .venv-tox/bin/tox ]; then
  "$py" -m venv .venv-tox
  .venv-tox/bin/pip install -q --upgrade pip
  .venv-tox/bin/pip install -q "tox>=4.11"
fi

args=()
if [ "$ci" = 1 ]; then args+=(--skip-missing-interpreters=false); fi
if [ "$#" -eq 0 ]; then set -- -e py311,py312,py313,lint,torch; fi
exec .venv-tox/bin/tox run "${args[@]}" "$@"
