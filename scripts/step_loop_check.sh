#!/usr/bin/env bash
# One device run for a change to the engine's step loop: every GPU-marked test, then a server of
# this tree measured with voice-agent sessions (benchmark.py --mode session at 1/16/64) and over
# HTTP (64/128), then the engine in process, this tree against BASELINE_DIR alternated (A B A B).
# Each part has its own time limit and writes its files as it goes, so a run cut short keeps what
# finished. Six files, no figures (draw them afterwards: python -m perf.plots FILE.json --out DIR).
# Usage on the GPU machine, from the repo root:
#   bash scripts/step_loop_check.sh BASELINE_DIR [OUT_DIR]
#   BASELINE_DIR: git archive <commit> | tar -x -C DIR (a tree with benchmark.py, perf/, voxcpm_engine/)
# Environment: PRESET (voxcpm1.5), SESSIONS ("1 16 64"), LEVELS ("64 128"), ROUNDS (1), SEQS (128).
set -uo pipefail
baseline=${1:?usage: bash scripts/step_loop_check.sh BASELINE_DIR [OUT_DIR]}
out=${2:-${OUT:-/tmp/step_loop_check}}
preset=${PRESET:-voxcpm1.5}
mkdir -p "$out" && out=$(cd "$out" && pwd)
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-}
ckpt=/tmp/ckpt/$preset
[ -f "$ckpt/config.json" ] || PYTHONPATH=$PWD:$PYTHONPATH python3 -m voxcpm_engine.tools.synthetic --preset "$preset" "$ckpt" --seed 0 >/dev/null || exit 1
t0=$(date +%s)
part() { echo "== [$(($(date +%s) - t0)) s] $*"; }

part "GPU tests"
PYTHONPATH=$PWD:$PYTHONPATH timeout 400 python3 -m pytest -q -m gpu -p no:cacheprovider -rfs tests/voxcpm_engine \
    >"$out/pytest_gpu.log" 2>&1
tail -8 "$out/pytest_gpu.log"

part "server, sessions and HTTP"
port=8710
PYTHONPATH=$PWD:$PYTHONPATH python3 -m tts_server --model "$ckpt" --max-num-seqs "${SEQS:-128}" --port $port \
    --host 127.0.0.1 --kernel-cache-dir /tmp/step_loop_kc --voices-dir "" --log-level warning >"$out/server.log" 2>&1 &
pid=$!
ready=0
for _ in $(seq 300); do
    curl -sf "127.0.0.1:$port/ready" >/dev/null && { ready=1; break; }
    kill -0 "$pid" 2>/dev/null || break  # a start that fails ends this part at once
    sleep 1
done
if [ $ready = 1 ]; then
    # shellcheck disable=SC2086
    PYTHONPATH=$PWD:$PYTHONPATH timeout 300 python3 benchmark.py --mode session --server "http://127.0.0.1:$port" \
        --concurrency ${SESSIONS:-1 16 64} --steps 25 --repeats 2 --warmup 2 --no-plot --json "$out/sessions.json" 2>&1 | tail -8
    # shellcheck disable=SC2086
    PYTHONPATH=$PWD:$PYTHONPATH timeout 200 python3 benchmark.py --mode http --server "http://127.0.0.1:$port" \
        --concurrency ${LEVELS:-64 128} --steps 50 --repeats 2 --warmup 2 --no-plot --json "$out/http.json" 2>&1 | tail -8
else
    echo "the server did not become ready:"; tail -20 "$out/server.log"
fi
kill -TERM "$pid" 2>/dev/null
wait "$pid"

inproc() {  # label tree round
    local plot=
    grep -q -- "--no-plot" "$2/benchmark.py" && plot=--no-plot  # an older tree draws nothing anyway
    # shellcheck disable=SC2086
    (cd "$2" && PYTHONPATH=$PWD:$PYTHONPATH timeout 200 python3 benchmark.py --model "$ckpt" --concurrency ${LEVELS:-64 128} \
        --steps 50 --repeats 3 $plot --json "$out/inproc-$1-$3.json") 2>&1 | grep -v '^  ' | tail -8
}
for round in $(seq 1 "${ROUNDS:-1}"); do
    part "in process, round $round"
    inproc current "$PWD" "$round"
    inproc baseline "$baseline" "$round"
done
part done
