#!/usr/bin/env bash
# Side by side over HTTP on one GPU: the server of this tree against the server of another tree
# (e.g. the last commit before a change), same synthetic checkpoint, same benchmark, in one run.
# It leaves in OUT_DIR each server's JSON and logs.tgz (every server's log and printed tables).
# Each server is started, warmed by the benchmark's own warm-up, measured with
# `benchmark.py --mode http` at each level REPEATS times, and stopped; the order alternates
# (A B A B ...) so a drifting machine does not favour one side.
# Usage (on the GPU machine, from the repo root):
#   bash scripts/http_ab.sh BASELINE_DIR [OUT_DIR]
#   BASELINE_DIR: a tree with voxcpm_engine/ and tts_server/ (git archive <commit> engine tts_server | tar -x -C DIR)
# Environment: PRESET (voxcpm1.5), LEVELS ("1 16 64 128"), STEPS (50), REPEATS (2), SEQS (128),
# FIRST (current: which side starts each round; the very first server pays the cold Triton compile),
# ARGS_CURRENT / ARGS_BASELINE (more tts_server flags for that side). One tree against a setting:
#   ARGS_BASELINE="--audio-ring-slots 0" bash scripts/http_ab.sh .   (step audio in the pipe vs shared memory)
#   ARGS_BASELINE="--stream-write-seconds 0" bash scripts/http_ab.sh .   (a write per chunk vs paced writes)
set -euo pipefail
baseline=${1:?usage: bash scripts/http_ab.sh BASELINE_DIR [OUT_DIR]}
out=${2:-${OUT:-/tmp/http_ab}}
preset=${PRESET:-voxcpm1.5}
levels=${LEVELS:-1 16 64 128}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-}
ckpt=/tmp/ckpt/$preset
[ -f "$ckpt/config.json" ] || PYTHONPATH=$PWD:$PYTHONPATH python3 -m voxcpm_engine.tools.synthetic --preset "$preset" "$ckpt" --seed 0

serve_and_measure() {  # label tree round extra-flags
    local label=$1 tree=$2 round=$3 extra=$4 port=8700 pid
    # shellcheck disable=SC2086
    PYTHONPATH=$tree:$PYTHONPATH python3 -m tts_server --model "$ckpt" --port $port --host 127.0.0.1 \
        --max-num-seqs "${SEQS:-128}" --voices-dir "" --log-level warning $extra >"$out/server-$label-$round.log" 2>&1 &
    pid=$!
    until python3 -c 'import sys, httpx; sys.exit(httpx.get("http://127.0.0.1:8700/ready", timeout=2).status_code != 200)' 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "server $label exited before it was ready:" >&2
            tail -30 "$out/server-$label-$round.log" >&2
            exit 1
        fi
        sleep 1
    done
    # shellcheck disable=SC2086
    PYTHONPATH=$PWD:$PYTHONPATH python3 benchmark.py --mode http --server http://127.0.0.1:$port \
        --concurrency $levels --steps "${STEPS:-50}" --warmup 2 --no-plot --json "$out/$label-$round.json" \
        2>&1 | tee "$out/$label-$round.txt" | tail -12
    kill -TERM "$pid"
    wait "$pid" || true
}

python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")'
for round in $(seq 1 "${REPEATS:-2}"); do
    if [ "${FIRST:-current}" = baseline ]; then
        serve_and_measure baseline "$baseline" "$round" "${ARGS_BASELINE:-}"
        serve_and_measure current "$PWD" "$round" "${ARGS_CURRENT:-}"
    else
        serve_and_measure current "$PWD" "$round" "${ARGS_CURRENT:-}"
        serve_and_measure baseline "$baseline" "$round" "${ARGS_BASELINE:-}"
    fi
done
# A device run returns at most eight files: the JSON of each server, and one archive of the rest.
(cd "$out" && tar -czf logs.tgz ./*.txt ./*.log && rm -f ./*.txt ./*.log)
