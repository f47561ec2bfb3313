#!/usr/bin/env bash
# Run tests/parity against the reference implementation (PyPI voxcpm==2.0.3) in a throwaway venv.
# One line: bash tests/parity/run.sh   (extra args go to pytest, e.g. -m slow)
# The reference's hard dependencies torchaudio/librosa are replaced by stubs (conftest.py); the
# rest is installed without voxcpm's heavy extras (gradio, funasr, modelscope, ...).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${PARITY_VENV:-.venv-parity}
PY="$VENV/bin/python"
[ -x "$PY" ] || python3 -m venv "$VENV"
stamp="$VENV/.installed-$(cat pyproject.toml tests/parity/run.sh | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q torch==2.13.0
    "$PY" -m pip install -q "transformers>=4.36,<6" einops pydantic tqdm huggingface_hub pytest
    "$PY" -m pip install -q --no-deps voxcpm==2.0.3
    "$PY" -m pip install -q -e .
    touch "$stamp"
fi
"$PY" -m pytest -q tests/parity "$@"
