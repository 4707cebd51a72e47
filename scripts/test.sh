#!/usr/bin/env bash
# Set up and run fedstore's whole test suite: tox on Python 3.11, 3.12, 3.13, lint and the
# PyTorch example (env torch: Python 3.11 with the CPU build of torch), side by side.
#   bash scripts/test.sh            # interpreters this machine lacks are skipped
#   bash scripts/test.sh --ci       # every interpreter must be present (what CI runs)
#   bash scripts/test.sh -e py311   # extra arguments go to `tox run-parallel`
# For the quick development tier see README.md ("Tests"): pytest -m "not slow".
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
if [ ! -x .venv-tox/bin/tox ] || ! .venv-tox/bin/python -c "import tox_uv" 2>/dev/null; then
  [ -x .venv-tox/bin/python ] || "$py" -m venv .venv-tox
  .venv-tox/bin/pip install -q --upgrade pip
  .venv-tox/bin/pip install -q "tox>=4.11" "tox-uv>=1.11"
fi

args=()
if [ "$ci" = 1 ]; then args+=(--skip-missing-interpreters=false); fi
if [ "$#" -eq 0 ]; then set -- -e py311,py312,py313,lint,torch; fi
# Two interpreters' suites at a time: the tests wait on processes and sockets
# for much of their run, so the second suite fills the gaps on a 2-core machine.
# Each environment's output is printed whole when it ends.
exec .venv-tox/bin/tox run-parallel --parallel "${FEDSTORE_TOX_PARALLEL:-2}" --parallel-no-spinner \
  "${args[@]}" "$@"
