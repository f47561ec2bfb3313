#!/usr/bin/env bash
# One device run for the one-kernel VAE residual units (EngineConfig.vae_units one-kernel): their GPU
# tests, then the engine in process with the units off and on, alternated (off on off on) on one
# machine, with the VAE in VAE_DTYPE, each level's median and spread in the JSON.
# Usage on the GPU machine, from the repo root: bash scripts/vae_units_ab.sh [OUT_DIR]
# Environment: PRESET (voxcpm1.5), VAE_DTYPE (bfloat16), LEVELS ("128 256 512"), SEQS (512), ROUNDS (2).
set -uo pipefail
out=${1:-${OUT:-/tmp/vae_units_ab}}
preset=${PRESET:-voxcpm1.5}
mkdir -p "$out"
source scripts/device_env.sh
timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider -rfs tests/voxcpm_engine/kernels/test_fused_vae_unit.py \
    tests/voxcpm_engine/worker/test_vae_stream.py 2>&1 | tee "$out/pytest_units_gpu.log" | tail -8
for round in $(seq 1 "${ROUNDS:-2}"); do
    for units in off on; do
        flag=; [ $units = on ] && flag='--vae-units one-kernel'
        echo "== units $units, round $round"
        # shellcheck disable=SC2086
        timeout 200 python3 benchmark.py --model "$ckpt" --max-num-seqs "${SEQS:-512}" --concurrency ${LEVELS:-128 256 512} \
            --steps 50 --repeats 2 --vae-dtype "${VAE_DTYPE:-bfloat16}" $flag --no-plot --json "$out/units-$units-$round.json" 2>&1 \
            | grep "^| ours" | tail -6
    done
done
