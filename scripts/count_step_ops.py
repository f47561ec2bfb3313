"""Count the device ops (≈ kernel launches on a GPU) of one graphed decode step, by model part.

A graphed step is launch-bound at small batches: its time is roughly the number of kernels times
a few microseconds. This runs the static decode step of ``voxcpm_engine.worker.decode_graphs`` eagerly on the CPU
with release layer counts (narrow widths, random weights) and counts the aten ops each top-level
module issues, so kernel fusion work can be tracked without a GPU.

    python scripts/count_step_ops.py --preset voxcpm1.5 [--fused]

Paged attention and the K/V store count as one kernel each (the CUDA kernels), whatever the CPU
reference does inside; with ``--fused`` each Triton kernel launch counts as one.
"""

from __future__ import annotations

import argparse
import collections
import copy
import os
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from voxcpm_engine.config.model_config import ModelConfig
from voxcpm_engine.config.presets import preset_config
from voxcpm_engine.model.voxcpm import VoxCPMModel
from voxcpm_engine.worker.decode_graphs import DecodeGraphs
from voxcpm_engine.worker.runner import ModelRunner

SKIP = {
    "aten.detach.default",
    "aten.view.default",
    "aten._unsafe_view.default",
    "aten.t.default",
    "aten.transpose.int",
    "aten.unsqueeze.default",
    "aten.expand.default",
    "aten.slice.Tensor",
    "aten.select.int",
    "aten.split.Tensor",
    "aten.split_with_sizes.default",
    "aten.squeeze.dim",
    "aten.alias.default",
    "aten.permute.default",
    "aten.reshape.default",
    "aten.chunk.default",
    "aten.as_strided.default",
    "aten.unbind.int",
    "aten.lift_fresh.default",
}


class Counter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.where = ["other"]
        self.counts: collections.Counter = collections.Counter()
        self.ops: collections.Counter = collections.Counter()
        self.muted = 0

    def record(self, name: str) -> None:
        self.counts[self.where[-1]] += 1
        self.ops[name] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name not in SKIP and not self.muted:
            self.record(name)
        return func(*args, **(kwargs or {}))

    def as_one_kernel(self, module, attr: str) -> None:
        """Count calls of ``module.attr`` as one kernel each, muting the ops inside."""
        fn = getattr(module, attr)

        def wrapped(*args, **kwargs):
            if not self.muted:
                self.record(f"kernel.{attr}")
            self.muted += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self.muted -= 1

        setattr(module, attr, wrapped)


def narrow(cfg: dict) -> dict:
    """Keep layer counts, patch size and latent width; shrink the widths (op counts do not depend on them)."""
    cfg = copy.deepcopy(cfg)
    lm = cfg["lm_config"]
    lm.update({"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2})
    lm.pop("kv_channels", None)
    n = 16  # head_dim 32 -> 16 RoPE factors
    lm["rope_scaling"]["long_factor"] = lm["rope_scaling"]["long_factor"][:n]
    lm["rope_scaling"]["short_factor"] = lm["rope_scaling"]["short_factor"][:n]
    for key in ("encoder_config", "dit_config"):
        cfg[key].update({"hidden_dim": 128, "ffn_dim": 256, "num_heads": 4})
        cfg[key].pop("kv_channels", None)
    cfg["scalar_quantization_latent_dim"] = 32
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="voxcpm1.5")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--timesteps", type=int, default=10)
    ap.add_argument("--fused", action="store_true", help="the fused Triton path (runs in the interpreter)")
    args = ap.parse_args()
    if args.fused and "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    cfg = ModelConfig.from_dict(narrow(preset_config(args.preset)))
    model = VoxCPMModel.build(cfg, dtype=torch.float32, init_weights=True)
    if args.fused:
        model.use_fused_kernels()
    runner = ModelRunner(model, num_blocks=64, block_size=16, attention_backend="torch")
    graphs = DecodeGraphs(runner, args.batch, 256, (args.timesteps,), capture=False)
    counter = Counter()
    import voxcpm_engine.worker.paged_kv

    counter.as_one_kernel(voxcpm_engine.worker.paged_kv, "paged_attention")
    counter.as_one_kernel(voxcpm_engine.worker.paged_kv, "store_kv")
    if args.fused:
        from voxcpm_engine.kernels import fused

        for name in ("rms_norm", "add_rms_norm", "rope_", "silu_mul", "cfg_euler_"):
            counter.as_one_kernel(fused, name)
    for name, module in model.named_children():
        module.register_forward_pre_hook(lambda m, a, name=name: counter.where.append(name) and None)
        module.register_forward_hook(lambda m, a, o: counter.where.pop() and None)
    with torch.inference_mode(), counter:
        graphs._forward(args.batch, args.timesteps, False)
    total = sum(counter.counts.values())
    path = "fused" if args.fused else "op-by-op"
    print(f"{args.preset} ({path}): {total} kernels per decode step (batch {args.batch}, {args.timesteps} timesteps)")
    for part, n in counter.counts.most_common():
        print(f"  {part:24s} {n:6d}")
    print("most frequent ops:")
    for op, n in counter.ops.most_common(25):
        print(f"  {op:48s} {n:6d}")


if __name__ == "__main__":
    main()
