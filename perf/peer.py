"""``nano-vllm-voxcpm`` (PyPI, 2.0.5) as an :class:`~perf.drivers.EngineAdapter`, driven in process.

The peer's public server pool (``VoxCPM.from_pretrained``) runs its engine in a spawned process
behind queues; to give both engines the same protocol this adapter drives the engine the pool's
worker loop drives, in process and step by step:

* build: ``VoxCPMServerImpl`` (``architecture: voxcpm``) or ``VoxCPM2ServerImpl`` (``voxcpm2``) from
  ``nanovllm_voxcpm.models.{voxcpm,voxcpm2}.server`` with ``model_path``, ``inference_timesteps``,
  ``max_num_batched_tokens``, ``max_num_seqs``, ``max_model_len``, ``gpu_memory_utilization``,
  ``enforce_eager`` and ``devices=[cuda index]`` (it loads ``*.safetensors`` + ``audiovae.pth`` and
  the tokenizer from the checkpoint directory, sizes its KV cache from ``gpu_memory_utilization``
  and captures its CUDA graphs);
* submit: ``add_request(seq_id, target_text, max_generate_length=N, temperature, cfg_value, seed)``.
  The peer has no minimum length: a request ends when its stop head fires or at
  ``max_generate_length`` patches. Random weights from ``voxcpm_engine.tools.synthetic`` tie the stop logits
  (argmax picks "continue"), so every request runs exactly ``N`` patches, as ours do with
  ``min_steps = max_steps = N``;
* step: ``step()`` returns the sequences it ran; each one's newest float32 chunk is
  ``seq.custom_payload.generated_waveforms[-1]`` and ``seq.is_finished`` marks its last one
  (exactly what the pool's worker loop streams out); ``is_finished()`` is true when nothing is
  waiting or running;
* sample rate: ``get_model_info()["sample_rate"]`` (the VAE's output rate: 44.1 kHz for VoxCPM1.5,
  48 kHz for VoxCPM2).

The package imports ``flash_attn`` at import time and needs CUDA; on a machine without flash-attn,
``../shared/tools/flash_attn_shim`` on ``PYTHONPATH`` stands in for it.

Checkpoint: the peer reads ``torch.load("audiovae.pth")["state_dict"]`` (the official file's
wrapper), while ``voxcpm_engine.tools.synthetic`` writes the bare state dict (our loader takes both). For such
a checkpoint, :func:`peer_checkpoint` makes a view directory: symlinks to every file but
``audiovae.pth``, which is re-saved wrapped. Same weights, same bytes elsewhere.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
from pathlib import Path
from typing import Any

import torch

from perf.drivers import Chunk, Sampling
from voxcpm_engine.config.model_config import ModelConfig
from voxcpm_engine.io.checkpoint import read_config

PEER_NAME = "nano-vllm-voxcpm"


def peer_unavailable() -> str | None:
    """Why the peer cannot run here (``None`` when it can)."""
    if importlib.util.find_spec("nanovllm_voxcpm") is None:
        return "nanovllm_voxcpm is not installed (pip install nano-vllm-voxcpm==2.0.5)"
    if importlib.util.find_spec("flash_attn") is None:
        return "flash_attn is not importable (put ../shared/tools/flash_attn_shim on PYTHONPATH)"
    if not torch.cuda.is_available():
        return "nano-vllm-voxcpm needs a CUDA device"
    return None


def peer_checkpoint(model_dir: str | Path, views_root: str | Path = "/tmp/voxcpm-bench/peer-views") -> Path:
    """``model_dir``, or a view of it whose ``audiovae.pth`` has the ``{"state_dict": ...}`` wrapper the peer needs."""
    model_dir = Path(model_dir).resolve()
    vae = model_dir / "audiovae.pth"
    if not vae.is_file():
        return model_dir  # let the peer report what is missing
    state = torch.load(vae, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        return model_dir
    tag = hashlib.sha1(f"{model_dir}:{vae.stat().st_mtime_ns}".encode()).hexdigest()[:12]
    view = Path(views_root) / f"{model_dir.name}-{tag}"
    if not (view / "audiovae.pth").is_file():
        view.mkdir(parents=True, exist_ok=True)
        for item in model_dir.iterdir():
            link = view / item.name
            if item.name != "audiovae.pth" and not link.exists():
                link.symlink_to(item)
        tmp = view / "audiovae.pth.tmp"
        torch.save({"state_dict": state}, tmp)
        tmp.replace(view / "audiovae.pth")
    return view


class PeerEngine:
    """The peer's engine in process (see the module docstring).

    Args:
        model_dir: Checkpoint directory (safetensors weights).
        device: CUDA device.
        max_num_seqs: Largest running batch.
        max_model_len: Most positions per request (prompt + generated).
        max_num_batched_tokens: Token budget of a step (raised to ``max_model_len`` if lower: the peer requires it).
        gpu_memory_utilization: Share of the GPU the peer may fill (its KV cache takes the rest of it).
        enforce_eager: No CUDA graphs.
        timesteps: Sampler Euler steps (a per-engine setting in the peer).
        dynamo_recompile_limit: Raise ``torch._dynamo``'s recompile limit (process-wide) before
            building. The peer ``torch.compile``s small functions (e.g. the VoxCPM2 AudioVAE's
            ``snake``); with torch 2.11 on an H200 that one recompiled per batch layout, hit the
            default limit of 8 and fell back to eager, which slowed the peer's VoxCPM2 runs down.
            ``None`` leaves torch's default (the peer as it ships).
    """

    name = PEER_NAME

    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: str | torch.device = "cuda",
        max_num_seqs: int,
        max_model_len: int,
        max_num_batched_tokens: int,
        gpu_memory_utilization: float = 0.85,
        enforce_eager: bool = False,
        timesteps: int = 10,
        dynamo_recompile_limit: int | None = None,
    ) -> None:
        why = peer_unavailable()
        if why is not None:
            raise RuntimeError(f"{PEER_NAME} cannot run: {why}")
        self.model_config: ModelConfig = read_config(model_dir)
        self.device = torch.device(device)
        if self.model_config.architecture == "voxcpm2":
            from nanovllm_voxcpm.models.voxcpm2.server import VoxCPM2ServerImpl as Impl
        else:
            from nanovllm_voxcpm.models.voxcpm.server import VoxCPMServerImpl as Impl
        self.timesteps = timesteps
        if dynamo_recompile_limit is not None:
            from torch._dynamo import config

            setattr(
                config,
                "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit",
                dynamo_recompile_limit,
            )
        # It sizes its KV cache from the allocator's peak: forget the peak of whatever ran before.
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        self.model_dir = peer_checkpoint(model_dir)
        self.srv: Any = Impl(
            model_path=str(self.model_dir),
            inference_timesteps=timesteps,
            max_num_batched_tokens=max(max_num_batched_tokens, max_model_len),
            max_num_seqs=max_num_seqs,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            devices=[self.device.index or 0],
        )
        self.sample_rate = int(self.srv.get_model_info()["sample_rate"])
        self.version = _peer_version()

    def add(self, request_id: str, text: str, sampling: Sampling, seed: int) -> None:
        if sampling.timesteps != self.timesteps:
            raise ValueError(f"the peer was built for {self.timesteps} timesteps, not {sampling.timesteps}")
        self.srv.add_request(
            seq_id=request_id,
            target_text=text,
            max_generate_length=sampling.steps,
            temperature=sampling.temperature,
            cfg_value=sampling.cfg_value,
            seed=seed,
        )

    def step(self) -> list[Chunk]:
        out = []
        for seq in self.srv.step():
            wave = seq.custom_payload.generated_waveforms[-1]
            out.append(Chunk(seq.seq_id, int(len(wave)), bool(seq.is_finished)))
        return out

    def has_unfinished(self) -> bool:
        return not self.srv.is_finished()

    def close(self) -> None:
        llm = self.srv.llm
        atexit.unregister(llm.exit)  # it registers itself; exiting twice fails
        llm.exit()
        del self.srv, llm
        torch.cuda.empty_cache()


def _peer_version() -> str:
    try:
        from importlib.metadata import version

        return version("nano-vllm-voxcpm")
    except Exception:  # not installed as a distribution (e.g. on PYTHONPATH)
        return "unknown"
