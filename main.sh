#!/usr/bin/env bash
# One-shot setup and run.
#   bash main.sh        set up .venv, get a model, synthesize a demo utterance (out/demo.wav)
#   bash main.sh test   set up .venv and run the whole test suite (unit tests, then parity)
# Re-running is safe and quick: installs happen only when pyproject.toml changed.
# Environment: MODEL (checkpoint directory; default: a synthetic tiny model, noise voice),
# VENV (default .venv), PARITY=0 skips the parity tests against the reference implementation.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PY="$VENV/bin/python"

setup() {
    [ -x "$PY" ] || python3 -m venv "$VENV"
    local stamp
    stamp="$VENV/.installed-$(cat pyproject.toml | sha1sum | cut -c1-12)"
    [ -f "$stamp" ] && return 0
    "$PY" -m pip install -q --upgrade pip
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "main.sh: NVIDIA GPU found: installing the CUDA build of torch"
        "$PY" -m pip install -q torch
        "$PY" -m pip install -q -e ".[dev,gpu]"
    else
        echo "main.sh: no GPU: installing the CPU build of torch"
        "$PY" -m pip install -q torch==2.13.0
        "$PY" -m pip install -q -e ".[dev]"
    fi
    touch "$stamp"
}

model_dir() {
    if [ -n "${MODEL:-}" ]; then
        echo "$MODEL"
        return
    fi
    local dir=out/models/tiny-v1
    if [ ! -f "$dir/config.json" ]; then
        echo "main.sh: NOTICE: no MODEL given: making a SYNTHETIC random-weight checkpoint; its voice is noise" >&2
        "$PY" -m engine.synthetic --preset tiny-v1 "$dir" >&2
    fi
    echo "$dir"
}

case "${1:-run}" in
    test)
        setup
        "$PY" -m pytest -q
        if [ "${PARITY:-1}" != "0" ]; then
            bash tests/parity/run.sh
        fi
        ;;
    run)
        setup
        dir=$(model_dir)
        mkdir -p out
        "$PY" -m engine.say --model "$dir" --text "Hello from VoxCPM." --max-steps 25 --out out/demo.wav
        ;;
    *)
        echo "usage: bash main.sh [run|test]" >&2
        exit 2
        ;;
esac
