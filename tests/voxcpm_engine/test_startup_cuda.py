"""Warm from the first request, on the GPU (marked ``gpu``): after start-up nothing compiles.

An engine built with its CUDA graphs and run through :func:`voxcpm_engine.startup.warm_up` serves new
batch sizes, prompts of new lengths, a voice prompt, arrivals beside running streams and decode
batches of every size, and with LoRA slots requests on a real LoRA voice beside plain ones, without
Triton compiling a single kernel (Triton's post-compile hook counts every kernel it builds, whether
from source or from its disk cache).
"""

import pytest
import torch

from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.engine import Engine
from voxcpm_engine.io.checkpoint import load_checkpoint
from voxcpm_engine.startup import warm_up
from voxcpm_engine.types import GenerationParams, Voice

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

triton = pytest.importorskip("triton")


def _params(steps: int, seed: int) -> GenerationParams:
    return GenerationParams(min_steps=steps, max_steps=steps, seed=seed)


@pytest.mark.parametrize(("name", "loras"), [("tiny_v1", 0), ("tiny_v2", 0), ("tiny_v2", 2)])
def test_nothing_compiles_after_warm_up(request, name, loras, monkeypatch, tmp_path):
    ckpt_dir = request.getfixturevalue(name)
    ckpt = load_checkpoint(ckpt_dir, device="cuda")
    config = EngineConfig(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=256, max_loras=loras)
    engine = Engine(ckpt, config)
    warm_up(engine)
    lora = None
    if loras:
        from voxcpm_engine.tools.synthetic_lora import write_lora

        engine.register_voice("calm", write_lora(ckpt_dir, tmp_path / "calm", rank=8, seed=3, enable_proj=True))
        lora = "calm"
    compiled: list[str] = []
    monkeypatch.setattr(triton.knobs.runtime, "jit_post_compile_hook", lambda *a, **kw: compiled.append(str(kw)))
    cfg = engine.model_config
    voice = Voice(prompt_text="A voice.", prompt_latents=torch.randn(5, cfg.patch_size, cfg.feat_dim))
    # One alone, then arrivals beside running streams (mixed steps), then a crowd up to the batch cap.
    engine.add_request("solo", "Alone at first, with a longer prompt than the warm-up had.", params=_params(6, 1))
    engine.step()
    engine.add_request("voiced", "Joins with a voice.", voice=voice, params=_params(5, 2))
    for i in range(6):
        engine.add_request(
            f"crowd{i}", "Word " * (3 + 5 * i), params=_params(4 + i % 3, 10 + i), lora=lora if i % 3 == 0 else None
        )
    while engine.has_unfinished():
        engine.step()
    torch.cuda.synchronize()
    assert compiled == [], f"{len(compiled)} kernels compiled after the warm-up"
    assert engine.runner.graph_steps > 0 and engine.runner.lm_graph_steps > 0
