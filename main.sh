#!/usr/bin/env bash
# One-shot setup and run.
#   bash main.sh        set up .venv, get a model, start the server, wait for /ready, run example.py
#                       against it (out/example.wav), then keep the server in the foreground
#   bash main.sh test   set up .venv, lint (ruff, the import-layer contracts), run the whole test suite
#                       (unit tests, then parity)
#   bash main.sh model  set up .venv, get the model (download, or the synthetic fallback) and print its directory
# Re-running is safe and quick: installs happen only when pyproject.toml changed.
# Environment:
#   MODEL   a checkpoint directory, a Hugging Face repo id (default openbmb/VoxCPM1.5), or
#           "synthetic"; when the model cannot be downloaded, a SYNTHETIC random-weight checkpoint
#           is used (its voice is noise; tiny-v1 on CPU, VoxCPM1.5-shaped on a GPU)
#   PORT    server port (default 8000); HOST (default 0.0.0.0); any TTS_* server setting
#   TTS_KERNEL_CACHE_DIR   compiled GPU kernels, kept across runs (default out/kernel-cache): a
#           restart finds them there and is ready in a fraction of a first start's time
#   VENV    virtual environment (default .venv); PARITY=0 skips the parity tests
#   FOREGROUND=0   stop the server after the example instead of keeping it running
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PY="$VENV/bin/python"

has_gpu() {
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1
}

setup() {
    [ -x "$PY" ] || python3 -m venv "$VENV"
    local stamp
    stamp="$VENV/.installed-$(cat pyproject.toml | sha1sum | cut -c1-12)"
    [ -f "$stamp" ] && return 0
    "$PY" -m pip install -q --upgrade pip
    if has_gpu; then
        echo "main.sh: NVIDIA GPU found: installing the CUDA build of torch"
        "$PY" -m pip install -q torch
        "$PY" -m pip install -q -e ".[dev,gpu]"
        if ! "$PY" -m pip install -q flash-attn --no-build-isolation; then
            echo "main.sh: flash-attn could not be installed: the engine uses its own Triton attention kernels instead"
        fi
    else
        echo "main.sh: no GPU: installing the CPU build of torch"
        "$PY" -m pip install -q torch==2.13.0
        "$PY" -m pip install -q -e ".[dev]"
    fi
    touch "$stamp"
}

synthetic_model() {
    local preset=tiny-v1
    has_gpu && preset=voxcpm1.5
    local dir="out/models/synthetic-$preset"
    {
        echo "main.sh: ##################################################################"
        echo "main.sh: NOTICE: using a SYNTHETIC random-weight checkpoint ($preset): its voice is NOISE"
        echo "main.sh: set MODEL=/path/to/checkpoint (or a Hugging Face repo id) for real speech"
        echo "main.sh: ##################################################################"
    } >&2
    [ -f "$dir/config.json" ] || "$PY" -m voxcpm_engine.tools.synthetic --preset "$preset" "$dir" >&2
    echo "$dir"
}

model_dir() {
    local model=${MODEL:-openbmb/VoxCPM1.5}
    if [ "$model" = synthetic ]; then
        synthetic_model
    elif [ -d "$model" ]; then
        echo "$model"
    else
        local dir="out/models/${model//\//--}"
        if [ -f "$dir/config.json" ]; then
            echo "$dir"
            return
        fi
        echo "main.sh: downloading $model from Hugging Face" >&2
        local why
        if why=$(download "$model" "$dir"); then
            echo "$dir"
        else
            echo "main.sh: could not download $model: $why" >&2
            synthetic_model
        fi
    fi
}

# Download a Hugging Face repo into a directory. On a terminal huggingface_hub's progress bar shows
# on stderr (bytes and files so far); elsewhere (a log, CI) the bar is off and one line on stderr says
# what came down (VOXCPM_PROGRESS=1/0 forces the bar on/off, as for the engine's tools). A failure
# prints one line on stdout (the reason, e.g. no network) and returns 1, instead of a long traceback.
download() {
    if ! "$PY" -c 'import huggingface_hub' 2>/dev/null; then
        local log
        log=$("$PY" -m pip install -q huggingface_hub 2>&1) || {
            echo "huggingface_hub is not installed and pip could not install it ($(tail -n 1 <<<"$log"))"
            return 1
        }
    fi
    local rc=0
    timeout 1800 "$PY" -c '
import sys
import time
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.utils import disable_progress_bars

from voxcpm_engine.tools.progress import progress_enabled

forced = progress_enabled()
if not (sys.stderr.isatty() if forced is None else forced):
    disable_progress_bars()  # huggingface_hub draws its bars on any stderr, a log file included
start = time.monotonic()
try:
    snapshot_download(sys.argv[1], local_dir=sys.argv[2])
except Exception as exc:  # one line for main.sh: the first line of the message says what failed
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = lines[0][:300] if lines else repr(exc)
    print(f"{type(exc).__name__}: {reason}")
    sys.exit(1)
files = [p for p in Path(sys.argv[2]).rglob("*") if p.is_file() and ".cache" not in p.parts]
size = sum(p.stat().st_size for p in files)
amount = f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"
print(f"main.sh: downloaded {len(files)} files ({amount}) in {time.monotonic() - start:.0f} s", file=sys.stderr)
' "$1" "$2" || rc=$?
    if [ "$rc" = 124 ]; then
        echo "timed out after 30 minutes"
    fi
    return "$rc"
}

run_server() {
    local dir port pid
    dir=$(model_dir)
    port=${PORT:-8000}
    mkdir -p out
    export TTS_KERNEL_CACHE_DIR=${TTS_KERNEL_CACHE_DIR:-$PWD/out/kernel-cache}
    "$PY" -m tts_server --model "$dir" --host "${HOST:-0.0.0.0}" --port "$port" --voices-dir "${TTS_VOICES_DIR:-out/voices}" &
    pid=$!
    # Signals go to the server, which drains and exits on its own.
    trap 'kill -TERM "$pid" 2>/dev/null || true' INT TERM
    echo "main.sh: waiting for the server (pid $pid) on port $port to be ready"
    until "$PY" -c 'import sys, httpx; sys.exit(httpx.get(sys.argv[1], timeout=2).status_code != 200)' \
        "http://127.0.0.1:$port/ready" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" || true
            echo "main.sh: the server exited before it was ready" >&2
            exit 1
        fi
        sleep 1
    done
    "$PY" example.py --server "http://127.0.0.1:$port" --text "Hello from VoxCPM." --out out/example.wav \
        --max-generate-length 25
    if [ "${FOREGROUND:-1}" = 0 ]; then
        kill -TERM "$pid"
        wait "$pid"
        return
    fi
    echo "main.sh: server running on port $port (Ctrl-C stops it)"
    local rc=0
    wait "$pid" || rc=$?
    # A signal interrupts the first wait; the server is still draining.
    if kill -0 "$pid" 2>/dev/null; then
        wait "$pid" || rc=$?
    fi
    exit "$rc"
}

case "${1:-run}" in
    test)
        setup
        "$PY" -m ruff check --quiet .
        "$PY" -m ruff format --check --quiet .
        "$VENV/bin/lint-imports" --no-cache
        "$PY" -m pytest -q
        if [ "${PARITY:-1}" != "0" ]; then
            bash tests/parity/run.sh
        fi
        ;;
    run)
        setup
        run_server
        ;;
    model)
        setup
        model_dir
        ;;
    *)
        echo "usage: bash main.sh [run|test|model]" >&2
        exit 2
        ;;
esac
