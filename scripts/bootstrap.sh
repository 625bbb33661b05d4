#!/usr/bin/env bash
# Creates .venv and installs the project into it: torch first (the CPU build unless an NVIDIA
# GPU is visible, so no multi-GB CUDA wheels land on CPU hosts), then the package.
# Usage: scripts/bootstrap.sh [dev]     Re-running is cheap: it skips what is already done.
# TORCH_BUILD=cpu|cuda forces the torch build (image builds have no GPU to detect).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
EXTRAS=${1:-}

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || { echo "bootstrap: Python 3.10+ is required ($PYTHON is $("$PYTHON" -V))" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

TORCH_BUILD=${TORCH_BUILD:-auto}
if [ "$TORCH_BUILD" = auto ]; then
  TORCH_BUILD=cpu
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then TORCH_BUILD=cuda; fi
fi
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  if [ "$TORCH_BUILD" = cuda ]; then
    echo "bootstrap: installing torch $TORCH_VERSION (CUDA build)"
    "${PIP[@]}" "torch==$TORCH_VERSION"
  else
    echo "bootstrap: installing torch $TORCH_VERSION (CPU build)"
    "${PIP[@]}" "torch==$TORCH_VERSION+cpu" 2>/dev/null \
      || "${PIP[@]}" "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu
  fi
fi

target="."
[ -n "$EXTRAS" ] && target=".[$EXTRAS]"
stamp=".venv/.installed-$( (cat pyproject.toml; echo "$target") | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing $target"
  "${PIP[@]}" -e "$target"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
