"""EngineConfig: the batched engine's limits, validated once against the model."""

from __future__ import annotations

from dataclasses import dataclass

from voxcpm_engine.config.model_config import ModelConfig

VAE_DTYPES = ("float32", "bfloat16")
"""Dtypes the streaming AudioVAE decode may run in (``EngineConfig.vae_dtype``), as torch attribute names."""

VAE_UNIT_KERNELS = ("passes", "gemm", "one-kernel")
"""The kernels the fused VAE can run its residual units with (``AudioVAE.use_fused_kernels``)."""

VAE_UNITS = ("auto", *VAE_UNIT_KERNELS)
"""Values of ``EngineConfig.vae_units``: a unit kernel, or ``"auto"`` (the faster one for the VAE's dtype)."""


@dataclass(frozen=True)
class EngineConfig:
    """Limits and sizes of the continuous-batching engine.

    Attributes:
        max_num_seqs: Most requests in the running batch.
        max_num_batched_tokens: Most LM positions one step may process (decode rows count one
            each; prefill chunks fill the rest), which bounds how long a step can stall streams.
        max_model_len: Most positions (prompt + generated patches) one request may hold.
        block_size: Positions per KV block.
        num_kv_blocks: KV blocks per LM stack; ``None`` derives it (CPU: enough for every running
            request at ``max_model_len``; GPU: from ``gpu_memory_utilization``).
        gpu_memory_utilization: Share of the GPU's memory the engine may use (GPU only).
        enable_prefix_caching: Reuse KV blocks of identical leading content (e.g. a VoxCPM2
            reference voice) across requests.
        max_loras: LoRA voices resident on the device at once (0: LoRA off).
        max_lora_rank: Largest adapter rank accepted.
        enforce_eager: On CUDA, never use CUDA graphs (every step runs eagerly).
        cuda_graph_timesteps: Sampler step counts whose pure-decode steps are captured as CUDA
            graphs (one graph per padded batch size each); requests with other counts run eagerly.
        fused_kernels: Run the transformer stacks and the sampler with the fused Triton kernels of
            :mod:`voxcpm_engine.kernels.fused`. ``None``: on CUDA only; ``True`` also forces them on the CPU
            (needs ``TRITON_INTERPRET=1``; tests); ``False``: never. Covers the VAE's Snake too.
        vae_tf32: Let cuDNN run the AudioVAE's convolutions in TF32 (PyTorch's own default, so the
            reference's numerics on a GPU; ~1.3x faster steps at batch 64-128) instead of true fp32.
            ``False`` for exactness: with TF32 a streamed decode drifts from the whole decode (see
            ``voxcpm_engine.model.audio_vae.conv_flags``).
        vae_dtype: Dtype of the AudioVAE's decodes (``"float32"`` or ``"bfloat16"``): activations,
            streaming state and folded weights (weight norm still computed in fp32, then rounded).
            Kernels accumulate in fp32 and the waveform handed out is always fp32. Prompt encoding
            stays fp32 either way. A name, not a ``torch.dtype``, so the server's settings need no torch.
        vae_overlap: On CUDA, run each step's VAE decode (and its audio's copy to the host) on a stream
            of its own, so that the next step's LMs and sampler run beside it on the GPU instead of
            behind it (:class:`voxcpm_engine.worker.vae_stream.VaeStreams`). Same audio either way; 0.5-1%
            more audio per second at 256-512 streams on an H100. No effect off CUDA.
        vae_units: How the fused kernels run the decoder's residual units
            (``x + conv1x1(snake(dwconv7(snake(x))))``). ``"auto"`` (default): ``"gemm"`` with a bf16
            VAE, ``"passes"`` with an fp32 one, the faster of the two for each dtype on an H100
            (bf16: +3.2% audio per second at 256 streams; fp32: the GEMM's IEEE fp32 products on CUDA
            cores are -7% against cuBLAS; docs/PERFORMANCE.md). ``"passes"``: the depthwise kernel, a cuBLAS
            GEMM, then the bias + residual kernel (eight tensor-sized passes). ``"gemm"``: the 1x1 conv
            as a Triton GEMM with bias, residual and the next Snake in its epilogue
            (:mod:`voxcpm_engine.kernels.fused_vae_pointwise`: six passes). ``"one-kernel"``: each
            streamed unit of 16-256 channels as one kernel (:mod:`voxcpm_engine.kernels.fused_vae_unit`:
            four passes), measured slower than the passes on an H100 (it is bound by its arithmetic
            and registers; -16% audio per second at 256 streams, docs/PERFORMANCE.md).
        async_scheduling: Schedule and launch the next decode step before copying a step's audio
            out, so that the host's per-step work overlaps the GPU's (arrivals then join one step
            later). ``None``: wherever CUDA graphs run.
        packed_lm_graphs: On CUDA, also capture both LMs of non-decode steps (a new request's
            prompt, alone or beside running streams) per padded token and sequence count
            (:mod:`voxcpm_engine.worker.packed_lm_graphs`); ``False`` runs those LMs op by op.
        warm_up: Run throw-away requests of every batch shape before the engine process says
            READY (:func:`voxcpm_engine.startup.warm_up`), so no first request pays a compile. ``None``:
            on CUDA only.
        kernel_cache_dir: Where the engine process keeps compiled Triton kernels (it sets
            ``TRITON_CACHE_DIR`` for itself before anything compiles). ``None``: Triton's own
            choice (``TRITON_CACHE_DIR`` as inherited, else ``~/.triton/cache``).
        audio_ring_slots: Steps of audio the engine process may have handed over in shared memory
            and the client not yet taken (:mod:`voxcpm_engine.proc.audio_ring`); ``0`` sends the
            audio pickled through the pipe instead.
    """

    max_num_seqs: int = 16
    max_num_batched_tokens: int = 1024
    max_model_len: int = 2048
    block_size: int = 16
    num_kv_blocks: int | None = None
    gpu_memory_utilization: float = 0.85
    enable_prefix_caching: bool = True
    max_loras: int = 0
    max_lora_rank: int = 32
    enforce_eager: bool = False
    cuda_graph_timesteps: tuple[int, ...] = (10,)
    fused_kernels: bool | None = None
    vae_tf32: bool = True
    vae_dtype: str = "float32"
    vae_overlap: bool = True
    vae_units: str = "auto"
    async_scheduling: bool | None = None
    packed_lm_graphs: bool = True
    warm_up: bool | None = None
    kernel_cache_dir: str | None = None
    audio_ring_slots: int = 4

    def __post_init__(self) -> None:
        checks = [
            ("max_num_seqs", self.max_num_seqs >= 1, "must be >= 1"),
            ("max_num_batched_tokens", self.max_num_batched_tokens >= self.max_num_seqs, "must be >= max_num_seqs"),
            ("max_model_len", self.max_model_len >= 2, "must be >= 2"),
            ("block_size", self.block_size >= 1, "must be >= 1"),
            ("num_kv_blocks", self.num_kv_blocks is None or self.num_kv_blocks >= 1, "must be >= 1"),
            ("gpu_memory_utilization", 0.0 < self.gpu_memory_utilization <= 1.0, "must be in (0, 1]"),
            ("max_loras", self.max_loras >= 0, "must be >= 0"),
            ("max_lora_rank", self.max_lora_rank >= 1, "must be >= 1"),
            ("audio_ring_slots", self.audio_ring_slots >= 0, "must be >= 0"),
            ("vae_dtype", self.vae_dtype in VAE_DTYPES, f"must be one of {', '.join(VAE_DTYPES)}"),
            ("vae_units", self.vae_units in VAE_UNITS, f"must be one of {', '.join(VAE_UNITS)}"),
            ("cuda_graph_timesteps", all(1 <= t <= 100 for t in self.cuda_graph_timesteps), "must be in [1, 100]"),
        ]
        for name, ok, msg in checks:
            if not ok:
                raise ValueError(f"EngineConfig.{name} {msg}, got {getattr(self, name)!r}")

    @property
    def vae_unit_kernels(self) -> str:
        """The residual units' kernels the engine runs: ``vae_units`` with ``"auto"`` resolved by ``vae_dtype``."""
        if self.vae_units != "auto":
            return self.vae_units
        return "gemm" if self.vae_dtype == "bfloat16" else "passes"

    def validate_for(self, model: ModelConfig) -> None:
        """Check the limits against a model (its KV capacity)."""
        if self.max_model_len > model.max_length:
            raise ValueError(
                f"EngineConfig.max_model_len {self.max_model_len} exceeds the model's max_length {model.max_length}"
            )

    def blocks_for(self, positions: int) -> int:
        """KV blocks that ``positions`` positions occupy."""
        return -(-positions // self.block_size)

    def default_cpu_blocks(self) -> int:
        """Enough blocks for every running request at full length."""
        return self.max_num_seqs * self.blocks_for(self.max_model_len)
