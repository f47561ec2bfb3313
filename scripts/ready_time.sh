#!/usr/bin/env bash
# Seconds from launch to the first 200 from /ready of `python -m tts_server` with its GPU defaults, twice:
# on an empty Triton cache (what a new replica's first users wait for), then on the cache that start filled.
# Usage (GPU machine, repo root; carry .whl): bash scripts/ready_time.sh [OUT_DIR]
# Environment: PRESET (voxcpm1.5), SERVER_ARGS (extra server flags, e.g. "--max-num-batched-tokens 1024").
set -uo pipefail
out=${1:-${OUT:-/tmp/ready_time}}
preset=${PRESET:-voxcpm1.5}
mkdir -p "$out"
source scripts/device_env.sh
TRITON_CACHE_DIR=$(mktemp -d)
export TRITON_CACHE_DIR
for run in cold warm; do
    t0=$(date +%s.%N)
    # shellcheck disable=SC2086
    python3 -m tts_server --model "$ckpt" --port 8701 --host 127.0.0.1 --voices-dir "" --log-level info \
        ${SERVER_ARGS:-} >"$out/server-$run.log" 2>&1 &
    pid=$!
    until curl -sf 127.0.0.1:8701/ready >/dev/null; do
        kill -0 $pid 2>/dev/null || { echo "server exited before it was ready:"; tail -20 "$out/server-$run.log"; exit 1; }
        sleep 0.5
    done
    echo "$run: ready after $(python3 -c "import time; print(round(time.time() - $t0, 1))") s from launch"
    grep -E "capturing|ready in" "$out/server-$run.log" | tail -4
    kill -TERM $pid
    wait $pid
done
