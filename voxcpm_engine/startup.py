"""An engine's start-up: its phases, the progress it reports, and the warm-up that ends it.

A freshly built :class:`~voxcpm_engine.engine.Engine` has captured its CUDA graphs (every decode batch
size, every packed-LM shape, the VAE), which compiles the kernels those graphs hold. What is left
cold are the eager pieces around them: the embeddings and local encoder of a step's inputs, a
voice prompt's VAE warm-up, the LoRA kernels of rows with an adapter (their LMs run op by op), the
pinned host buffers of the audio copies, the first use of each request's random generator.
:func:`warm_up` runs a few throw-away requests of the shapes the engine serves through the real
step loop, so the first real request of any shape pays none of that. The engine process reports
each phase (:class:`StartupProgress`) before it says READY, and the server keeps ``/ready`` at 503
until then.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from voxcpm_engine.types import StartupPhase, StartupProgress

if TYPE_CHECKING:
    from voxcpm_engine.config.engine_config import EngineConfig
    from voxcpm_engine.engine import Engine
    from voxcpm_engine.io.lora_files import Adapter
    from voxcpm_engine.worker.runner import ModelRunner

__all__ = [
    "ProgressFn",
    "StartupPhase",
    "StartupProgress",
    "capture_step_graphs",
    "freeze_heap",
    "warm_up",
    "warm_up_batches",
    "warm_up_plan",
]


ProgressFn = Callable[[StartupProgress], None]


class ProgressClock:
    """Turns ``(phase, done, total)`` ticks into :class:`StartupProgress` for a callback, with the elapsed time."""

    def __init__(self, report: ProgressFn | None, started: float | None = None) -> None:
        self.report = report
        self.started = time.monotonic() if started is None else started

    def __call__(self, phase: StartupPhase, done: int = 0, total: int = 0) -> None:
        if self.report is not None:
            self.report(StartupProgress(phase, done, total, time.monotonic() - self.started))

    def phase(self, phase: StartupPhase) -> Callable[[int, int], None]:
        """A ``(done, total)`` callback for one phase (what the capture loops take)."""
        return lambda done, total: self(phase, done, total)


def capture_step_graphs(runner: ModelRunner, config: EngineConfig, progress: ProgressClock | None = None) -> None:
    """Capture the runner's CUDA graphs: every decode batch size, then every packed-LM shape (if enabled).

    Args:
        runner: A CUDA runner with nothing in flight; its ``graphs`` and ``lm_graphs`` are set.
        config: The engine limits the graphs cover (batch sizes, token budget, positions).
        progress: Told each graph captured.
    """
    from voxcpm_engine.worker.decode_graphs import DecodeGraphs
    from voxcpm_engine.worker.packed_lm_graphs import PackedLMGraphs

    runner.graphs = DecodeGraphs(
        runner,
        config.max_num_seqs,
        config.max_model_len,
        config.cuda_graph_timesteps,
        capture=True,
        on_capture=progress.phase(StartupPhase.DECODE_GRAPHS) if progress else None,
    )
    if config.packed_lm_graphs:
        runner.lm_graphs = PackedLMGraphs(
            runner,
            config.max_num_batched_tokens,
            config.max_num_seqs,
            config.max_model_len,
            capture=True,
            on_capture=progress.phase(StartupPhase.PACKED_LM_GRAPHS) if progress else None,
        )


def warm_up_batches(max_num_seqs: int) -> list[int]:
    """Batch sizes of the warm-up: alone, small crowds, and sizes on both sides of a multiple of 16.

    Integer arguments of Triton kernels are specialised on being 1 or a multiple of 16, so a count
    of 16 and a count of 17 compile different variants of one kernel.
    """
    sizes = [1, 2, 3, 16, 17, max_num_seqs]
    return sorted({s for s in sizes if s <= max_num_seqs})


def warm_up_plan(engine: Engine) -> list[tuple[int, bool]]:
    """The warm-up's batches in order: ``(size, with LoRA rows)``; the LoRA pass only with adapter slots."""
    sizes = warm_up_batches(engine.config.max_num_seqs)
    plan = [(size, False) for size in sizes]
    if engine.adapters is not None:
        plan += [(size, True) for size in sizes]
    return plan


WARM_UP_ADAPTER = "__warm_up_lora"  # registered for the LoRA pass only, then removed


def _zero_adapter(engine: Engine) -> Adapter:
    """An adapter of the engine's largest rank on every LoRA layer, all zeros (adds nothing)."""
    from voxcpm_engine.io.lora_files import Adapter, LoRAConfig

    assert engine.adapters is not None
    slots = engine.adapters.slots
    rank = slots.max_rank
    weights = {
        name: (torch.zeros(rank, layer.in_features), torch.zeros(layer.out_features, rank))
        for name, layer in slots.layers.items()
    }
    config = LoRAConfig(enable_lm=True, enable_dit=True, enable_proj=True, r=rank, alpha=rank)
    return Adapter(config, weights, engine.model_config.architecture)


def warm_up(engine: Engine, tick: Callable[[int, int], None] | None = None, steps: int = 3) -> float:
    """Run throw-away requests through the engine's step loop; returns the seconds it took.

    Each batch is added at once and run to its end (``steps`` patches per request): the first
    step is a packed prefill of the batch, the rest are decode steps. The first batch's request
    carries a voice prompt (audio positions in the prefill and the VAE's prompt warm-up); text
    lengths differ so that prompts are not all one length. With LoRA slots the batch sizes run
    again with every other request (the first included) on a zero adapter of the largest rank,
    which is removed afterwards.

    Args:
        engine: A freshly built engine with nothing in flight.
        tick: Called with ``(batches done, batches)`` after each batch.
        steps: Patches per warm-up request.
    """
    from voxcpm_engine.types import GenerationParams, Voice

    start = time.perf_counter()
    cfg = engine.model_config
    plan = warm_up_plan(engine)
    prompt = Voice(prompt_text="Warm up.", prompt_latents=torch.zeros(3, cfg.patch_size, cfg.feat_dim))
    if any(lora for _, lora in plan):
        engine.adapters.register(WARM_UP_ADAPTER, _zero_adapter(engine))  # type: ignore[union-attr]
    try:
        for b, (size, lora) in enumerate(plan):
            for i in range(size):
                engine.add_request(
                    f"__warmup_{b}_{i}",
                    "Warm-up sentence number one. " * (1 + i % 3),
                    voice=prompt if b == 0 else None,
                    params=GenerationParams(min_steps=steps, max_steps=steps, seed=i),
                    lora=WARM_UP_ADAPTER if lora and i % 2 == 0 else None,
                )
            while engine.has_unfinished():
                engine.step()
            if tick is not None:
                tick(b + 1, len(plan))
    finally:
        if engine.adapters is not None and WARM_UP_ADAPTER in engine.adapters.names():
            engine.adapters.unregister(WARM_UP_ADAPTER)
    if torch.cuda.is_available() and engine.runner.model.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def freeze_heap() -> float:
    """Collect garbage once, then keep every surviving object out of all later collections; returns the seconds.

    A process that has just imported torch, loaded a model and captured its graphs holds millions
    of long-lived objects. Python's first full collection after that walks all of them, tens of
    milliseconds on whatever request happens to allocate at that moment (the first one, as a rule).
    :func:`gc.freeze` moves them to the permanent generation, so later collections see only
    objects made while serving. Call it once, when start-up is over and before serving.
    """
    start = time.perf_counter()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - start
