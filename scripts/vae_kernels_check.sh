#!/usr/bin/env bash
# Device runs for the streamed VAE's kernels, in two parts that fit one call each:
#   bash scripts/vae_kernels_check.sh kernels [OUT_DIR]  # the unit kernels' GPU tests, then
#       scripts/bench_vae_kernels.py (units, sin, whole decode steps, the decode step's profile)
#   bash scripts/vae_kernels_check.sh engine [OUT_DIR]   # the engine in process, bf16 VAE:
#       --vae-units passes / gemm, each with libdevice's sin and with the reduced sin.approx (fused_vae.SIN_MODE 2),
#       and with libdevice's sin without the rows' alignment (fused_vae.ALIGN_ROWS off: "-unaligned")
# Environment: PRESET (voxcpm1.5), BATCHES (128 256), LEVELS ("128 256"), SEQS (256), VARIANTS (the engine runs to make, by
# label: "passes-sin1-unaligned passes-sin1 gemm-sin1-unaligned gemm-sin1 gemm-sin2 passes-sin2", all by default), SKIP (tables of bench_vae_kernels.py to skip).
set -uo pipefail
part=${1:?usage: bash scripts/vae_kernels_check.sh kernels|engine [OUT_DIR]}
out=${2:-${OUT:-/tmp/vae_kernels_check}}
preset=${PRESET:-voxcpm1.5}
mkdir -p "$out"
source scripts/device_env.sh
if [ "$part" = kernels ]; then
    timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider -rfs tests/voxcpm_engine/kernels/test_fused_vae_unit.py \
        tests/voxcpm_engine/kernels/test_fused_vae_pointwise.py tests/voxcpm_engine/worker/test_vae_stream.py \
        tests/voxcpm_engine/kernels/test_fused_vae.py -k "unit or pointwise or gemm or reduced" 2>&1 | tee "$out/pytest_units_gpu.log" | tail -4
    timeout 300 python3 scripts/bench_vae_kernels.py --preset "$preset" ${BATCHES:+--batches $BATCHES} ${SKIP:+--skip $SKIP} --json "$out/kernels.json" 2>&1 | grep -v Warn
    exit 0
fi
run() {  # label sin_mode [benchmark flags]
    local label=$1 mode=$2 align=True
    shift 2
    [[ " ${VARIANTS:-$label} " == *" $label "* ]] || return 0
    [[ $label == *-unaligned ]] && align=False
    echo "== $label"
    # shellcheck disable=SC2086
    timeout 120 python3 -c "import runpy, sys; import voxcpm_engine.kernels.fused_vae as f; f.SIN_MODE = $mode; \
f.ALIGN_ROWS = $align; sys.argv = sys.argv[1:]; runpy.run_path('benchmark.py', run_name='__main__')" benchmark.py --model "$ckpt" \
        --max-num-seqs "${SEQS:-256}" --concurrency ${LEVELS:-128 256} --steps 50 --repeats 2 --vae-dtype bfloat16 \
        --no-plot --json "$out/engine-$label.json" "$@" 2>&1 | grep "^| ours" | tail -4
}
run passes-sin1-unaligned 1
run passes-sin1 1
run gemm-sin1-unaligned 1 --vae-units gemm
run gemm-sin1 1 --vae-units gemm
run gemm-sin2 2 --vae-units gemm
run passes-sin2 2
