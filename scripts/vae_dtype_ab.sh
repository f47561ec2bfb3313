#!/usr/bin/env bash
# One device run for the bf16 VAE decode (EngineConfig.vae_dtype): its GPU tests, then the engine in
# process with the VAE in float32 and in bfloat16, alternated (f b f b) on one machine, at levels up
# to 512 streams, each level's median and spread in the JSON (benchmark.py --json) and a figure.
# Usage on the GPU machine, from the repo root: bash scripts/vae_dtype_ab.sh [OUT_DIR]
# Environment: PRESET (voxcpm1.5), LEVELS ("64 128 256 512"), SEQS (512), STEPS (50), ROUNDS (2).
set -uo pipefail
out=${1:-${OUT:-/tmp/vae_dtype_ab}}
preset=${PRESET:-voxcpm1.5}
mkdir -p "$out"
source scripts/device_env.sh
python3 -m pytest -q -m gpu -p no:cacheprovider tests/voxcpm_engine/worker/test_vae_stream.py \
    tests/voxcpm_engine/kernels/test_fused_vae.py 2>&1 | tee "$out/pytest_vae_gpu.log" | tail -12
for round in $(seq 1 "${ROUNDS:-2}"); do
    for dtype in float32 bfloat16; do
        echo "== $dtype, round $round"
        # shellcheck disable=SC2086
        python3 benchmark.py --model "$ckpt" --max-num-seqs "${SEQS:-512}" --concurrency ${LEVELS:-64 128 256 512} \
            --steps "${STEPS:-50}" --repeats 2 --vae-dtype "$dtype" --json "$out/$dtype-$round.json" 2>&1 \
            | grep -v '^  ' | tail -9
    done
done
