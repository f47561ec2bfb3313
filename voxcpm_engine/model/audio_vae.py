"""AudioVAE V1 (VoxCPM-0.5B, VoxCPM1.5) and V2 (VoxCPM2): causal DAC-style conv VAE (spec §7).

One implementation serves both versions; :class:`~voxcpm_engine.config.model_config.AudioVAEConfig` selects the
differences (V2's encoder left-pad rule and its output-sample-rate conditioning). The module tree and
``state_dict`` match the official ``audiovae.pth`` key for key (legacy weight-norm names, Snake
``alpha``, V2's int32 buffer ``decoder.sr_bin_boundaries``, the unused ``encoder.fc_logvar``).

The VAE is meant to run in fp32 (spec §11 item 1); inputs are cast to the parameter dtype. Decodes
may run in bf16 instead (:meth:`AudioVAE.set_decode_dtype`, ``EngineConfig.vae_dtype``); encodes never.

Streaming: both decoders are fully causal, so :meth:`AudioVAE.decode_stream` decodes a batch of
streams chunk by chunk from a :class:`StreamingDecoderState`; the concatenated chunks of a stream
equal :meth:`AudioVAE.decode` of all its frames up to fp32 op-order noise (spec §6.6).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voxcpm_engine.config.engine_config import VAE_UNIT_KERNELS
from voxcpm_engine.config.model_config import AudioVAEConfig
from voxcpm_engine.model.vae_convs import CausalConv1d, CausalConvTranspose1d, StreamableModule, StreamBuffers
from voxcpm_engine.model.vae_layers import DecoderBlock, EncoderBlock, SampleRateCondition, Snake1d, run_layers
from voxcpm_engine.model.vae_state import Rows, StreamingDecoderState

__all__ = ["AudioVAE", "Decoder", "Encoder", "Rows", "StreamingDecoderState", "conv_flags"]


class Encoder(nn.Module):
    """Waveform ``[B, 1, T]`` -> latent mean ``[B, latent_dim, T / encode_hop]`` (spec §7.2)."""

    def __init__(self, config: AudioVAEConfig) -> None:
        super().__init__()
        dim = config.encoder_dim
        out_dim = dim * 2 ** len(config.encoder_rates)
        # fc_mu / fc_logvar are registered before `block`, as in the reference, so key order matches too.
        self.fc_mu = CausalConv1d(out_dim, config.latent_dim, 3, left_pad=2)
        self.fc_logvar = CausalConv1d(out_dim, config.latent_dim, 3, left_pad=2)  # unused: encode returns the mean
        layers: list[nn.Module] = [CausalConv1d(1, dim, 7, left_pad=6)]
        for stride in config.encoder_rates:
            layers.append(EncoderBlock(dim, stride, dim if config.depthwise else 1, config.version))
            dim *= 2
        self.block = nn.Sequential(*layers)

    def forward(self, wav: Tensor) -> Tensor:
        """Encode ``wav`` (length already a multiple of the hop) to the latent mean."""
        return self.fc_mu(run_layers(self.block, wav, None))


class Decoder(nn.Module):
    """Latents ``[B, latent_dim, F]`` -> waveform ``[B, 1, F * decode_hop]`` in ``[-1, 1]`` (spec §7.3, §7.4)."""

    sr_bin_boundaries: Tensor | None

    def __init__(self, config: AudioVAEConfig) -> None:
        super().__init__()
        latent, ch = config.latent_dim, config.decoder_dim
        if config.depthwise:
            layers: list[nn.Module] = [
                CausalConv1d(latent, latent, 7, groups=latent, left_pad=6),
                CausalConv1d(latent, ch, 1),
            ]
        else:
            layers = [CausalConv1d(latent, ch, 7, left_pad=6)]
        out_dim = ch
        for i, stride in enumerate(config.decoder_rates):
            in_dim, out_dim = ch // 2**i, ch // 2 ** (i + 1)
            layers.append(DecoderBlock(in_dim, out_dim, stride, out_dim if config.depthwise else 1))
        layers += [Snake1d(out_dim), CausalConv1d(out_dim, 1, 7, left_pad=6), nn.Tanh()]
        # The waveform conv writes fp32 from its fp32 sum on the fused path, so a bf16 decode adds no
        # bf16 rounding (~-59 dB) to the audio itself; one channel, so it costs nothing.
        layers[-2].out_dtype = torch.float32
        self.model = nn.ModuleList(layers)

        self.sr_cond_model: nn.ModuleDict | None = None
        if config.version == 2 and config.sr_bin_boundaries is not None:
            self.register_buffer("sr_bin_boundaries", torch.tensor(config.sr_bin_boundaries, dtype=torch.int32))
            buckets = len(config.sr_bin_boundaries) + 1
            # Keyed by the index of the DecoderBlock it precedes: keys `sr_cond_model.{i}.*` as in the reference.
            self.sr_cond_model = nn.ModuleDict(
                {
                    str(i): SampleRateCondition(layer.in_dim, buckets)
                    for i, layer in enumerate(layers)
                    if isinstance(layer, DecoderBlock)
                }
            )
        else:
            self.sr_bin_boundaries = None

    def forward(self, z: Tensor, sr_bucket: Tensor | None = None, stream: StreamBuffers | None = None) -> Tensor:
        """Decode ``z``; ``sr_bucket`` (``[1]`` or ``[B]``) is required iff the decoder is rate-conditioned."""
        x = z
        for i, layer in enumerate(self.model):
            if self.sr_cond_model is not None and str(i) in self.sr_cond_model:
                x = self.sr_cond_model[str(i)](x, sr_bucket)
            x = layer(x, stream) if isinstance(layer, StreamableModule) else layer(x)
        return x


def conv_flags(tf32: bool = False, *, benchmark: bool | None = None) -> contextlib.AbstractContextManager:
    """cuDNN convolutions for the VAE: true fp32 by default, TF32 when asked.

    ``benchmark=True`` lets cuDNN time its algorithms per input shape (worth it where shapes are
    static, e.g. the engine's captured decode buckets); ``None`` keeps the global setting.

    With TF32 (PyTorch's default for cuDNN, so what the reference does on a GPU) each of the
    decoder's ~40 random-feature convs rounds its inputs to 10 mantissa bits; on VoxCPM2 shapes a
    streamed decode then drifted up to 0.017 from the whole decode on an H200, against 1e-6 on the
    CPU. So exactness is the default; ``EngineConfig.vae_tf32`` trades it for speed at large batches,
    where the fp32 VAE is the biggest part of a step.
    """
    cudnn = torch.backends.cudnn
    return cudnn.flags(
        enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic, allow_tf32=tf32
    )


class AudioVAE(nn.Module):
    """The VoxCPM AudioVAE (V1 or V2), built from an :class:`~voxcpm_engine.config.model_config.AudioVAEConfig`.

    Args:
        config: Shapes and version; validated on construction.

    Attributes:
        config: The configuration.
        encoder: :class:`Encoder` (state-dict prefix ``encoder.``).
        decoder: :class:`Decoder` (state-dict prefix ``decoder.``).
    """

    def __init__(self, config: AudioVAEConfig) -> None:
        super().__init__()
        config.validate("audio_vae_config")
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        stateful = [
            m for m in self.decoder.modules() if isinstance(m, CausalConv1d | CausalConvTranspose1d) and m.context > 0
        ]
        for slot, conv in enumerate(stateful):
            if isinstance(conv, CausalConv1d) and conv.stride != 1:
                raise ValueError("streaming needs stride-1 causal convs in the decoder")
            conv.stream_slot = slot
        # Shapes only (channels, context); the modules themselves stay reachable through `decoder`.
        self._stream_shapes = [(conv.in_channels, conv.context) for conv in stateful]
        self.tf32_convs = False  # see conv_flags
        self._decode_dtype: torch.dtype | None = None  # None: the parameters' dtype

    def set_decode_dtype(self, dtype: torch.dtype) -> None:
        """Run decodes (whole and streamed) in ``dtype`` (fp32 or bf16); encodes keep the parameters' dtype.

        bf16 halves the bytes of a memory-bound decode. The parameters stay fp32: the decoder's convs
        fold ``g * v / ||v||`` in fp32 and keep it rounded to ``dtype`` (with their biases), Snake
        alphas stay fp32 (every Snake computes in fp32), and the fused kernels sum in fp32. Stream
        states are made in ``dtype``; the waveform is returned in the parameters' dtype.
        """
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"AudioVAE decodes in float32 or bfloat16, not {dtype}")
        compute = None if dtype == self.dtype else dtype
        self._decode_dtype = compute
        for module in self.decoder.modules():
            if isinstance(module, CausalConv1d | CausalConvTranspose1d):
                module.compute_dtype = compute
                if compute is not None or module.folded_weight is not None:
                    module.fold()  # a bf16 weight is always folded: the fp32 norm is not redone per call

    def use_fused_kernels(self, units: str = "passes") -> None:
        """The CUDA fast paths of :mod:`voxcpm_engine.kernels.fused_vae`, with the conv weights folded.

        Snake in one pass; residual units' 1x1 convs as GEMMs with bias and residual fused; in
        streaming decodes the depthwise convs as one kernel over context and input (the next Snake
        fused in) and the transposed convs as one GEMM plus an overlap-add kernel. ``units`` picks the
        residual units' kernels (``EngineConfig.vae_unit_kernels``: ``"passes"``, ``"gemm"`` or ``"one-kernel"``)."""
        if units not in VAE_UNIT_KERNELS:
            raise ValueError(f"units must be one of {', '.join(VAE_UNIT_KERNELS)}, got {units!r}")
        for module in self.modules():
            if isinstance(module, Snake1d | CausalConv1d | CausalConvTranspose1d):
                module.fused = True
            elif isinstance(module, DecoderBlock):
                module.use_unit_kernels(units)
        self.fold_weight_norm()  # inference only: no weight norm recomputed per call

    @property
    def encode_hop(self) -> int:
        """Input samples (at ``config.sample_rate``) per latent frame."""
        return self.config.encode_hop

    @property
    def decode_hop(self) -> int:
        """Output samples (at ``config.output_sample_rate``) per latent frame."""
        return self.config.decode_hop

    @property
    def sample_rate(self) -> int:
        """Rate the encoder expects."""
        return self.config.sample_rate

    @property
    def output_sample_rate(self) -> int:
        """Rate of decoded audio by default."""
        return self.config.output_sample_rate

    @property
    def latent_dim(self) -> int:
        """Channels of a latent frame."""
        return self.config.latent_dim

    @property
    def stream_shapes(self) -> list[tuple[int, int]]:
        """``(channels, context)`` of each stateful decoder convolution, in stream-slot order."""
        return list(self._stream_shapes)

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.encoder.fc_mu.weight_v.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the parameters (fp32 unless converted)."""
        return self.encoder.fc_mu.weight_v.dtype

    @property
    def decode_dtype(self) -> torch.dtype:
        """Dtype decodes run in (:meth:`set_decode_dtype`; default the parameters')."""
        return self._decode_dtype or self.dtype

    def encode(self, wav: Tensor, sample_rate: int | None = None) -> Tensor:
        """Encode a waveform batch to latent means.

        Args:
            wav: ``[B, 1, T]`` or ``[B, T]`` at ``self.sample_rate``; right-padded with zeros to a
                multiple of ``encode_hop`` like the reference.
            sample_rate: Optional check; must equal ``self.sample_rate``.

        Returns:
            ``[B, latent_dim, ceil(T / encode_hop)]`` in the parameter dtype.
        """
        if sample_rate is not None and sample_rate != self.sample_rate:
            raise ValueError(f"AudioVAE encodes {self.sample_rate} Hz audio, got {sample_rate} Hz (resample first)")
        if wav.ndim == 2:
            wav = wav.unsqueeze(1)
        hop = self.encode_hop
        length = wav.shape[-1]
        wav = F.pad(wav.to(self.dtype), (0, math.ceil(length / hop) * hop - length))
        with conv_flags(self.tf32_convs):
            return self.encoder(wav)

    def sample_rate_bucket(self, sample_rate: int | Tensor | None, device: torch.device) -> Tensor | None:
        """V2 conditioning bucket ``bucketize(rate, boundaries)`` (48 kHz -> 3); ``None`` for V1.

        Args:
            sample_rate: Output rate, one int or a ``[B]`` tensor; ``None`` means ``output_sample_rate``.
            device: Device of the latents.
        """
        boundaries = self.decoder.sr_bin_boundaries
        if boundaries is None:
            if sample_rate is not None and not bool(torch.all(torch.as_tensor(sample_rate) == self.sample_rate)):
                raise ValueError(f"this AudioVAE only decodes at {self.sample_rate} Hz")
            return None
        if sample_rate is None:
            sample_rate = self.output_sample_rate
        rate = torch.as_tensor(sample_rate, dtype=boundaries.dtype, device=device).reshape(-1)
        return torch.bucketize(rate, boundaries)

    def decode(self, z: Tensor, sample_rate: int | Tensor | None = None) -> Tensor:
        """Decode latents to a waveform.

        Args:
            z: ``[B, latent_dim, F]`` (cast to :attr:`decode_dtype`, normally fp32).
            sample_rate: V2 only: output rate to condition on (int or ``[B]``), default
                ``output_sample_rate``. The output length does not depend on it.

        Returns:
            ``[B, 1, F * decode_hop]`` in the parameters' dtype, whatever :attr:`decode_dtype` is.
        """
        with conv_flags(self.tf32_convs):
            wav = self.decoder(z.to(self.decode_dtype), self.sample_rate_bucket(sample_rate, z.device))
        return wav.to(self.dtype)

    def new_stream_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> StreamingDecoderState:
        """Zero streaming state for ``batch_size`` new streams (default: the parameters' device, the decode dtype)."""
        device = self.encoder.fc_mu.weight_v.device if device is None else device
        dtype = dtype or self.decode_dtype
        return StreamingDecoderState(
            [torch.zeros(batch_size, c, ctx, device=device, dtype=dtype) for c, ctx in self._stream_shapes]
        )

    @torch.no_grad()
    def decode_stream(
        self, z_chunk: Tensor, state: StreamingDecoderState, sample_rate: int | Tensor | None = None
    ) -> Tensor:
        """Decode the next ``f`` frames of every stream, updating ``state`` in place (runs under no_grad).

        Args:
            z_chunk: ``[B, latent_dim, f]`` with ``B == state.batch_size``; row ``r`` continues stream ``r``.
            state: From :meth:`new_stream_state` (or derived from one); its buffers are replaced.
            sample_rate: As in :meth:`decode`.

        Returns:
            ``[B, 1, f * decode_hop]``: the samples of these frames only.
        """
        if z_chunk.shape[0] != state.batch_size or len(state.buffers) != len(self._stream_shapes):
            raise ValueError(
                f"state holds {state.batch_size} rows / {len(state.buffers)} buffers, "
                f"chunk has {z_chunk.shape[0]} rows and the model {len(self._stream_shapes)} buffers"
            )
        if z_chunk.shape[-1] == 0:  # nothing to emit; convs reject empty inputs and the state must not move
            return z_chunk.new_zeros(z_chunk.shape[0], 1, 0, dtype=self.dtype)
        bucket = self.sample_rate_bucket(sample_rate, z_chunk.device)
        with conv_flags(self.tf32_convs):
            return self.decoder(z_chunk.to(self.decode_dtype), bucket, state.buffers).to(self.dtype)

    def fold_weight_norm(self) -> None:
        """Cache every conv's effective weight instead of recomputing ``g * v / ||v||`` per call.

        The cached tensor is the output of the same ``torch._weight_norm`` call on the same
        parameters, so outputs stay bit-identical (tolerance 0) on the same device and dtype. Call
        again after changing dtype or editing parameters in place; ``load_state_dict`` refreshes the
        cache itself. No gradients reach ``weight_g``/``weight_v`` while folded. A bf16 decoder
        (:meth:`set_decode_dtype`) stays folded through :meth:`unfold_weight_norm`.
        """
        for module in self.modules():
            if isinstance(module, CausalConv1d | CausalConvTranspose1d):
                module.fold()

    def unfold_weight_norm(self) -> None:
        """Return to recomputing the weight-normed weights on every call (the default)."""
        for module in self.modules():
            if isinstance(module, CausalConv1d | CausalConvTranspose1d) and module.compute_dtype is None:
                module.unfold()
