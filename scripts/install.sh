#!/usr/bin/env bash
# Install nerfmine from this checkout into the current Python environment.
#   bash scripts/install.sh         the package
#   bash scripts/install.sh test    the package and its test dependencies
# A torch >= 2.11 that is already installed is kept (a GPU machine's CUDA build). Otherwise a
# machine without an NVIDIA GPU gets the CPU build torch==2.13.0, so pip does not pull several
# GB of CUDA packages; a machine with one gets the current CUDA build.
set -euo pipefail
extra="${1:-}"
PY="${PYTHON:-python3}"
cd "$(dirname "$0")/.."
if "$PY" - <<'PYCODE' 2>/dev/null
import sys, torch
major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
sys.exit(0 if (major, minor) >= (2, 11) else 1)
PYCODE
then
  echo "install: keeping the installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  "$PY" -m pip install "torch>=2.11"
else
  "$PY" -m pip install "torch==2.13.0"
fi
"$PY" -m pip install -e ".${extra:+[$extra]}"
