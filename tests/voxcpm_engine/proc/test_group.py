"""Tests of voxcpm_engine.proc.group: one engine process per device behind the EngineClient interface."""

import asyncio

import numpy as np
import pytest
import torch

from tests.voxcpm_engine.proc.engine_helpers import LONG, SMALL, TEXT, collect, flac, params, tone, until
from voxcpm_engine.io.prompt_audio import AudioLimitError, AudioLimits, load_audio
from voxcpm_engine.proc.errors import RequestCancelled, RequestFailed
from voxcpm_engine.proc.group import AsyncEngineGroup


def test_group_routes_to_the_least_loaded_engine_and_around_a_dead_one(tiny_v1):
    def owners(group, ids):
        return [next(i for i, e in enumerate(group.engines) if e.has_request(r)) for r in ids]

    async def go():
        async with AsyncEngineGroup(tiny_v1, SMALL, devices=["cpu", "cpu"], num_threads=1) as group:
            kept = group.generate("kept", TEXT, params=params(LONG, 1))
            streams = {r: group.generate(r, TEXT, params=params(LONG, 1)) for r in "abcd"}
            assert owners(group, ["kept", *"abcd"]) == [0, 1, 0, 1, 0]
            assert await group.abort("a")
            with pytest.raises(RequestCancelled):
                await collect(streams.pop("a"))
            streams["e"] = group.generate("e", TEXT, params=params(LONG, 1))  # engine 1 has one request less
            assert owners(group, "e") == [1]
            await asyncio.gather(*(anext(s) for s in streams.values()))
            stats = await group.stats()
            assert stats["alive"] and stats["running"] == 5 and [s["running"] for s in stats["engines"]] == [3, 2]
            for s in streams.values():
                await s.aclose()
            await asyncio.sleep(0.3)
            stats = await group.stats()
            assert (stats["running"], stats["unfinished"]) == (1, 1)
            with pytest.raises(ValueError, match="serves no LoRA"):
                await group.register_voice("v", "/nowhere")
            # a failure inside engine 0's loop (here: a control message it does not know) fails its requests
            group.engines[0]._send(object())
            with pytest.raises(RequestFailed, match="engine core failed: TypeError: unknown control message"):
                await collect(kept)
            await asyncio.wait_for(until(lambda: not group.engines[0].is_alive), 5)
            late = group.generate("late", TEXT, params=params(LONG, 1))  # left open through the shutdown
            assert owners(group, ["late"]) == [1]
            # a file is decoded here, then encoded by the live engine: as that engine does its samples
            audio = flac(np.stack([tone(44_100, 0.4), tone(44_100, 0.4, 330.0)], axis=1), 44_100)
            samples = load_audio(audio, group.encode_sample_rate)
            assert torch.equal(await group.encode_prompt(audio), await group.engines[1].encode_prompt(samples))
            with pytest.raises(AudioLimitError, match="exceeds the limit of 0.1 s"):
                await group.encode_prompt(audio, limits=AudioLimits(max_seconds=0.1))
            stats = await group.stats()
            assert stats["alive"] and [s["alive"] for s in stats["engines"]] == [False, True]
            assert "engine core failed" in stats["engines"][0]["error"]
        with pytest.raises(RequestCancelled):
            await collect(late)
        assert not group.is_alive and not (await group.stats())["alive"]

    asyncio.run(go())
