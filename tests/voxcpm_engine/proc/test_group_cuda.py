"""One engine process per GPU (marked ``gpu``; needs two CUDA devices)."""

import asyncio

import numpy as np
import pytest
import torch

from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.proc.group import AsyncEngineGroup
from voxcpm_engine.types import GenerationParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices"),
]


def test_two_devices_share_the_load_and_both_produce_audio(tiny_v2):
    params = [GenerationParams(min_steps=5, max_steps=5, seed=i) for i in range(6)]

    async def go():
        config = EngineConfig(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=256)
        async with AsyncEngineGroup(tiny_v2, config, devices=["cuda:0", "cuda:1"]) as group:
            streams = {f"r{i}": group.generate(f"r{i}", f"Request {i}.", params=p) for i, p in enumerate(params)}
            owners = [next(i for i, e in enumerate(group.engines) if e.has_request(r)) for r in streams]
            audio = {}
            for r, s in streams.items():
                audio[r] = np.concatenate([c async for c in s])
            stats = await group.stats()
        return owners, audio, stats

    owners, audio, stats = asyncio.run(go())
    assert owners == [0, 1, 0, 1, 0, 1]
    assert all(a.shape == (5 * 7680,) and np.isfinite(a).all() for a in audio.values())
    assert [e["device"] for e in stats["engines"]] == ["cuda:0", "cuda:1"]
