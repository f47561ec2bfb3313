#!/usr/bin/env bash
# One device run for the CUDA path of single-request generation: GPU-marked tests on the tiny
# presets, then voxcpm_engine.tools.say on full-size synthetic VoxCPM1.5 and VoxCPM2 checkpoints.
# Usage (on the GPU machine, from the repo root): bash scripts/gpu_smoke.sh [OUT_DIR]
# Missing wheels (soundfile, soxr) may be carried in .whl/ and are installed first.
set -euo pipefail
out=${1:-${OUT:-/tmp/gpu_smoke}}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
python3 -m pytest -q -m gpu tests/voxcpm_engine 2>&1 | tee "$out/pytest_gpu.log" || echo "GPU TESTS FAILED"
for preset in voxcpm1.5 voxcpm2; do
    python3 -m voxcpm_engine.tools.synthetic --preset "$preset" "/tmp/ckpt/$preset" --seed 0
    for run in 1 2; do
        python3 -m voxcpm_engine.tools.say --model "/tmp/ckpt/$preset" --device cuda --seed 1 --min-steps 50 --max-steps 50 \
            --text "A fifty step utterance on the GPU." --out "$out/$preset.wav" 2>&1 | tee -a "$out/say.log"
    done
done
