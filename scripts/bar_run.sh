#!/usr/bin/env bash
# Issue 19's bar in one device call, one model: ours in process, ours over HTTP through
# `python -m tts_server`, and the peer (nano-vllm-voxcpm) in process, on the same synthetic
# checkpoint, each warmed by the benchmark's own warm-up before its levels.
# Usage (GPU machine, repo root; carry .whl and .peer):
#   bash scripts/bar_run.sh [OUT_DIR]
# .peer holds the peer's wheel (nano_vllm_voxcpm) and what it imports that the device image lacks
# (librosa and its pure-Python deps), and flash_attn_shim/ (a copy of ../shared/tools/flash_attn_shim).
# Environment: PRESET (voxcpm1.5), LEVELS ("128 256 512"), PEER_LEVELS ("128 256"), SEQS (256),
# REPEATS (2), TOKENS (4096: --max-num-batched-tokens of both of ours, so that HTTP and in process are the same
# engine), PEER_GPU_MEM (0.6: the peer's share of the GPU; at its 0.85 its KV cache left too little for its
# VAE at 128 streams on an 80 GB H100), OURS_ARGS (engine flags for both of ours, e.g. "--vae-dtype bfloat16 --vae-units gemm";
# the server gets the same ones), PARTS ("engine http peer"; "openloop" also runs Poisson arrivals over HTTP against the
# same server at OPEN_RATES per second, default "40 60 80 100", OPEN_SECONDS (15) each: the bar asks for gap-free
# capacity at >= 85% of the closed peak in arrivals per second, the peak's audio s/s over 8 s per request),
# REQUESTS (unset: each level is one wave of as many requests as streams, started together; a number: that many
# requests per level to every side, each finished one replaced at once, so the level is mostly steady state).
set -uo pipefail
rpl=${REQUESTS:+--requests-per-level $REQUESTS}
out=${1:-${OUT:-/tmp/bar_run}}
preset=${PRESET:-voxcpm1.5}
levels=${LEVELS:-128 256 512}
ours_args=${OURS_ARGS:-}
mkdir -p "$out"
source scripts/device_env.sh
part() { [[ " ${PARTS:-engine http peer} " == *" $1 "* ]]; }
t0=$(date +%s)
stamp() { echo "[$(($(date +%s) - t0)) s] $*"; }
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))'
if part engine; then
    stamp "ours in process: $levels"
    # shellcheck disable=SC2086
    timeout 240 python3 benchmark.py --model "$ckpt" --max-num-seqs "${SEQS:-256}" --max-num-batched-tokens "${TOKENS:-4096}" \
        --concurrency $levels --steps 50 $rpl \
        --repeats "${REPEATS:-2}" $ours_args --no-plot --json "$out/engine.json" 2>&1 | grep "^| ours" | tail -6
fi
if part http || part openloop; then
    stamp "ours over HTTP: $levels"
    # shellcheck disable=SC2086
    python3 -m tts_server --model "$ckpt" --port 8700 --host 127.0.0.1 --max-num-seqs "${SEQS:-256}" --voices-dir "" \
        --max-num-batched-tokens "${TOKENS:-4096}" \
        --log-level warning $ours_args >"$out/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 240); do
        python3 -c 'import sys, httpx; sys.exit(httpx.get("http://127.0.0.1:8700/ready", timeout=2).status_code != 200)' \
            2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || { echo "server exited before it was ready:"; tail -30 "$out/server.log"; exit 1; }
        sleep 1
    done
    stamp "server ready"
    if part http; then
        # shellcheck disable=SC2086
        timeout 240 python3 benchmark.py --mode http --server http://127.0.0.1:8700 --concurrency $levels --steps 50 $rpl \
            --repeats "${REPEATS:-2}" --warmup 2 --no-plot --json "$out/http.json" 2>&1 | tail -40
    fi
    if part openloop; then
        stamp "ours over HTTP, open loop: ${OPEN_RATES:-40 60 80 100} arrivals/s"
        # shellcheck disable=SC2086
        timeout 300 python3 benchmark.py --mode open-loop --server http://127.0.0.1:8700 --rates ${OPEN_RATES:-40 60 80 100} \
            --duration "${OPEN_SECONDS:-15}" --steps 50 --warmup 8 --no-plot --json "$out/open_loop.json" 2>&1 | tail -12
    fi
    curl -s 127.0.0.1:8700/status >"$out/status.json" || true
    kill -TERM "$pid"
    wait "$pid" || true
fi
if part peer; then
    stamp "the peer in process: ${PEER_LEVELS:-128 256}"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .peer/*.whl || exit 1
    # shellcheck disable=SC2086
    PYTHONPATH=$PYTHONPATH:$PWD/.peer/flash_attn_shim timeout 300 python3 benchmark.py --mode peer --model "$ckpt" \
        --max-num-seqs "${SEQS:-256}" --gpu-memory-utilization "${PEER_GPU_MEM:-0.6}" --concurrency ${PEER_LEVELS:-128 256} --steps 50 $rpl --repeats "${REPEATS:-2}" \
        --no-plot --json "$out/peer.json" 2>&1 | grep -v Warn | tail -8
fi
stamp done
