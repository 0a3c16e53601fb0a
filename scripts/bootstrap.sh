#!/usr/bin/env sh
# Creates .venv and installs panelfuse with the given extras, once per change of pyproject.toml.
# Usage: scripts/bootstrap.sh EXTRAS   (e.g. "local" or "local,postgres,dev")
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
extras=${1:-local}
python=${PYTHON:-python3}
cd "$root"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
sum=$(cat pyproject.toml | cksum | cut -d' ' -f1)
stamp=".venv/.installed-$(echo "$extras" | tr ',' '-')-$sum"
if [ ! -f "$stamp" ]; then
  echo "panelfuse: installing into .venv ($extras); the first time compiles llama-cpp-python (about 5 minutes)..." >&2
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[$extras]" >&2
  touch "$stamp"
fi
