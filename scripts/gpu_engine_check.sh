#!/usr/bin/env bash
# One device run for the batched engine's CUDA path: every GPU-marked test (kernels, engine,
# LoRA layers, single-request path), then the paged-attention benchmark.
# Usage on the GPU machine, from the repo root: bash scripts/gpu_engine_check.sh [OUT_DIR]
set -uo pipefail
out=${1:-${OUT:-/tmp/gpu_engine}}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name(0))'
python3 -m pytest -q -m gpu tests/voxcpm_engine -p no:cacheprovider 2>&1 | tee "$out/pytest_gpu.log" | tail -25
python3 scripts/bench_attention.py 2>&1 | tee "$out/bench_attention.log" | tail -40
python3 scripts/bench_decode_graphs.py --json "$out/bench_decode_graphs.json" 2>&1 | tee "$out/bench_decode_graphs.log" | tail -20
