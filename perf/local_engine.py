"""Our in-process :class:`~voxcpm_engine.engine.Engine` as an :class:`~perf.drivers.EngineAdapter`, and its limits.

The counterpart of :mod:`perf.peer` (``nano-vllm-voxcpm`` behind the same protocol): the drivers in
:mod:`perf.drivers` are generic over the adapter, so what is specific to our engine (loading it,
mapping :class:`~perf.drivers.Sampling` to its ``GenerationParams``, reading its outputs, the
:class:`~voxcpm_engine.config.engine_config.EngineConfig` of a benchmark run) lives here, apart from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from perf.drivers import Chunk, Sampling
from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.config.model_config import ModelConfig

__all__ = ["LocalEngine", "engine_config"]


class LocalEngine:
    """Our in-process :class:`~voxcpm_engine.engine.Engine` as an :class:`~perf.drivers.EngineAdapter`.

    Args:
        engine: The engine.
    """

    name = "ours"

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.sample_rate: int = engine.sample_rate
        self.model_config: ModelConfig = engine.model_config
        self.device: torch.device = engine.runner.model.device
        self.voices: list[str] = []  # LoRA voices the requests cycle through (use_loras)
        self._added = 0

    def use_loras(self, model_dir: str | Path, count: int, rank: int, work_dir: str | Path) -> None:
        """Register ``count`` random LoRA voices of ``rank`` (files under ``work_dir``); requests cycle through them."""
        from voxcpm_engine.tools.synthetic_lora import write_lora

        for i in range(count):
            name = f"lora{i}"
            path = Path(work_dir) / name
            if not (path / "lora_config.json").exists():
                write_lora(model_dir, path, rank=rank, seed=i)
            self.engine.register_voice(name, path)
            self.voices.append(name)

    @classmethod
    def load(
        cls, model_dir: str | Path, device: str, config: EngineConfig, attention_backend: str | None = None
    ) -> LocalEngine:
        """Load a checkpoint and build the engine (CUDA graphs are captured here on CUDA)."""
        from voxcpm_engine.engine import Engine
        from voxcpm_engine.io.checkpoint import load_checkpoint

        return cls(Engine(load_checkpoint(model_dir, device=device), config, attention_backend=attention_backend))

    def add(self, request_id: str, text: str, sampling: Sampling, seed: int) -> None:
        params = sampling.params(seed)
        lora = self.voices[self._added % len(self.voices)] if self.voices else None
        self._added += 1
        self.engine.add_request(request_id, text, params=params, lora=lora)

    def step(self) -> list[Chunk]:
        from voxcpm_engine.sched.request import RequestStatus

        out = []
        for o in self.engine.step():
            bad = o.status in (RequestStatus.CANCELLED, RequestStatus.FAILED)
            samples = 0 if o.audio is None else int(o.audio.shape[0])
            stages = None
            if o.times is not None:  # the request's first audio: where its time went in the engine
                added, queued, scheduled, first_patch, first_audio = o.times.as_tuple()
                stages = {
                    "prepare": (queued - added) * 1e3,
                    "wait": (scheduled - queued) * 1e3,
                    "prefill": (first_patch - scheduled) * 1e3,
                    "vae": (first_audio - first_patch) * 1e3,
                }
            out.append(Chunk(o.request_id, samples, o.finished, o.status.name if bad else None, stages))
        return out

    def has_unfinished(self) -> bool:
        return self.engine.has_unfinished()

    def close(self) -> None:
        del self.engine
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def engine_config(
    *,
    max_num_seqs: int,
    max_model_len: int,
    max_num_batched_tokens: int,
    gpu_memory_utilization: float = 0.85,
    enforce_eager: bool = False,
    timesteps: int = 10,
    fused_kernels: bool = True,
    vae_tf32: bool = True,
    vae_dtype: str = "float32",
    vae_overlap: bool = True,
    vae_units: str = "auto",
    async_scheduling: bool = True,
    packed_lm_graphs: bool = True,
    max_loras: int = 0,
    max_lora_rank: int = 32,
) -> EngineConfig:
    """Our engine's limits for a benchmark run (graphs captured for ``timesteps``)."""
    return EngineConfig(
        fused_kernels=None if fused_kernels else False,
        vae_tf32=vae_tf32,
        vae_dtype=vae_dtype,
        vae_overlap=vae_overlap,
        vae_units=vae_units,
        async_scheduling=None if async_scheduling else False,
        packed_lm_graphs=packed_lm_graphs,
        max_loras=max_loras,
        max_lora_rank=max_lora_rank,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max(max_num_batched_tokens, max_num_seqs),
        max_model_len=max_model_len,
        gpu_memory_utilization=gpu_memory_utilization,
        enforce_eager=enforce_eager,
        cuda_graph_timesteps=(timesteps,),
    )
