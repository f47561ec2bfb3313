"""Model FLOPs of one generated patch (one request, one engine step), from the model's config.

Every matmul counts ``2·M·N·K`` (bias adds, norms, activations, RoPE, softmax and the Euler update
are left out, as ``torch.utils.flop_counter`` does). One decode step of one request is:

* ``base_lm`` / ``residual_lm``: one new position through each causal stack (q/k/v/o projections,
  SwiGLU MLP) plus the attention products ``QKᵀ`` and ``AV`` over ``context_len + 1`` keys;
* ``dit_sampler``: the velocity network called ``n − zero_init_steps(n)`` times on a CFG batch of 2
  (in/cond projections of ``P`` frames, the two time MLPs, the bidirectional stack over
  ``1 + 2P`` (v1) or ``3 + 2P`` (v2) tokens, the output projection of ``P`` tokens);
* ``local_encoder``: the new patch's ``P`` frames projected, the stack over ``P + 1`` tokens,
  ``enc_to_lm_proj`` of the CLS output (the next step's LM input);
* ``projections``: FSQ in/out, v2's ``fusion_concat_proj``, ``lm_to_dit_proj``,
  ``res_to_dit_proj``, ``stop_proj`` and ``stop_head``;
* ``vae_decode``: the streaming AudioVAE decode of the patch's ``P`` latent frames (each causal
  transposed conv also re-reads the one frame of context it keeps, so a streamed patch costs a
  little more than its share of a whole-utterance decode; ``vae_streaming=False`` gives the latter).

:func:`step_flops` is the closed form; :func:`count_step_flops` runs the same step through the real
modules under ``FlopCounterMode`` (any device, ``meta`` included: nothing is computed there), which
is how the tests check the closed form. ``python -m perf.flops --preset voxcpm1.5`` prints both.
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from voxcpm_engine.config.model_config import AudioVAEConfig, LMConfig, ModelConfig
from voxcpm_engine.model.sampler import zero_init_steps

PARTS = ("base_lm", "residual_lm", "local_encoder", "dit_sampler", "projections", "vae_decode")


def _mm(m: int, k: int, n: int) -> float:
    """FLOPs of an ``[m, k] @ [k, n]`` product."""
    return 2.0 * m * k * n


def stack_flops(cfg: LMConfig, tokens: int, keys: int) -> float:
    """One pass of a MiniCPM stack over ``tokens`` positions, each attending to ``keys`` keys.

    Args:
        cfg: The stack's config.
        tokens: Positions computed (queries).
        keys: Keys each query attends to (bidirectional local stacks: ``tokens``; 0 leaves the
            attention products out).
    """
    h, heads, kv_heads, d = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    proj = _mm(tokens, h, heads * d) * 2 + _mm(tokens, h, kv_heads * d) * 2  # q, o; k, v
    mlp = _mm(tokens, h, cfg.intermediate_size) * 3
    attn = 2 * _mm(tokens, d, keys) * heads  # QKᵀ and AV per head
    return cfg.num_hidden_layers * (proj + mlp + attn)


def dit_call_flops(cfg: ModelConfig, rows: int = 1, attention_products: bool = True) -> float:
    """One velocity-network call on ``rows`` rows (the sampler's CFG batch is 2 per request)."""
    dit, p, d = cfg.dit_lm_config(), cfg.patch_size, cfg.feat_dim
    hd = dit.hidden_size
    tokens = (3 if cfg.version == 2 else 1) + 2 * p
    per_row = (
        2 * _mm(p, d, hd)  # in_proj(x), cond_proj(cond)
        + 4 * _mm(1, hd, hd)  # time_mlp, delta_time_mlp (two linears each)
        + stack_flops(dit, tokens, tokens if attention_products else 0)
        + _mm(p, hd, d)  # out_proj of the last P tokens
    )
    return rows * per_row


def vae_decode_flops(vae: AudioVAEConfig, frames: int, streaming: bool = True) -> float:
    """AudioVAE decode of ``frames`` latent frames (convolutions: ``2·T·K·C_in/groups·C_out``).

    Args:
        vae: The AudioVAE config.
        frames: Latent frames decoded (``patch_size`` for one patch).
        streaming: Streamed decode (each transposed conv also runs on its one frame of context).
    """

    def conv(t: int, k: int, c_in: int, c_out: int, groups: int = 1) -> float:
        return 2.0 * t * k * (c_in // groups) * c_out

    latent, ch = vae.latent_dim, vae.decoder_dim
    t = frames
    if vae.depthwise:
        total = conv(t, 7, latent, latent, groups=latent) + conv(t, 1, latent, ch)
    else:
        total = conv(t, 7, latent, ch)
    out_dim = ch
    for i, stride in enumerate(vae.decoder_rates):
        in_dim, out_dim = ch // 2**i, ch // 2 ** (i + 1)
        total += conv(t + (1 if streaming else 0), 2 * stride, in_dim, out_dim)  # transposed: input frames
        t *= stride
        groups = out_dim if vae.depthwise else 1
        total += 3 * (conv(t, 7, out_dim, out_dim, groups) + conv(t, 1, out_dim, out_dim))  # residual units
    return total + conv(t, 7, out_dim, 1)


def step_flops(
    cfg: ModelConfig,
    *,
    inference_timesteps: int = 10,
    context_len: int = 0,
    vae_streaming: bool = True,
    attention_products: bool = True,
) -> dict[str, float]:
    """FLOPs per generated patch of one request, by part (see the module docstring), plus ``total``.

    Args:
        cfg: The model's config.
        inference_timesteps: Euler steps of the sampler (the estimator runs ``n − zero_init_steps(n)`` times).
        context_len: Positions already in the KV cache before the step's new one (prompt + earlier
            patches); the new position attends to ``context_len + 1`` keys in both LMs.
        vae_streaming: Count the streamed VAE decode (what the engine runs) rather than a share of
            a whole-utterance decode.
        attention_products: Count ``QKᵀ``/``AV``; ``False`` gives what ``FlopCounterMode`` sees on
            a CPU, whose fused SDPA kernel it does not count (that is how the performance issue's
            44.6 / 90.8 GFLOP per step for VoxCPM1.5 / VoxCPM2 were counted, with a
            whole-utterance VAE decode).

    Returns:
        FLOPs for each of :data:`PARTS` and ``total``.
    """
    lm, h = cfg.base_lm_config(), cfg.lm.hidden_size
    keys = context_len + 1 if attention_products else 0
    enc = cfg.encoder_lm_config()
    enc_keys = cfg.patch_size + 1 if attention_products else 0
    p, d = cfg.patch_size, cfg.feat_dim
    hd = cfg.dit.hidden_dim
    projections = (
        _mm(1, h, cfg.fsq_latent_dim) * 2  # fsq in/out
        + (_mm(1, 2 * h, h) if cfg.version == 2 else 0.0)  # fusion_concat_proj
        + _mm(1, h, hd) * 2  # lm_to_dit_proj, res_to_dit_proj
        + _mm(1, h, h)  # stop_proj
        + _mm(1, h, 2)  # stop_head
    )
    calls = inference_timesteps - zero_init_steps(inference_timesteps)
    parts = {
        "base_lm": stack_flops(lm, 1, keys),
        "residual_lm": stack_flops(cfg.residual_lm_config(), 1, keys),
        "local_encoder": _mm(p, d, enc.hidden_size) + stack_flops(enc, p + 1, enc_keys) + _mm(1, enc.hidden_size, h),
        "dit_sampler": calls * dit_call_flops(cfg, rows=2, attention_products=attention_products),
        "projections": projections,
        "vae_decode": vae_decode_flops(cfg.audio_vae, p, streaming=vae_streaming),
    }
    parts["total"] = sum(parts.values())
    return parts


def audio_seconds_per_patch(cfg: ModelConfig) -> float:
    """Seconds of output audio one patch carries."""
    return cfg.samples_per_patch / cfg.sample_rate


def achieved_figures(
    cfg: ModelConfig,
    *,
    timesteps: int,
    steps: int,
    patches: int,
    wall_s: float,
    peak_tflops: float | None,
) -> dict[str, float | None]:
    """Achieved model FLOP/s of a run: FLOPs per patch × patches produced / wall time.

    The LM attention is counted at the mid-utterance context (``steps // 2`` cached positions; the
    prompt's few positions are left out, well under 0.1% of a step). Prefill is not counted.

    Args:
        cfg: The model's config.
        timesteps: Sampler Euler steps per patch.
        steps: Patches per request (sets the mid-utterance context).
        patches: Patches the run produced.
        wall_s: Wall time of the run.
        peak_tflops: The device's peak (``None``: no MFU).
    """
    per_patch = step_flops(cfg, inference_timesteps=timesteps, context_len=steps // 2)["total"]
    tflops = per_patch * patches / wall_s / 1e12 if wall_s > 0 else float("nan")
    return {
        "gflop_per_patch": per_patch / 1e9,
        "tflop_per_audio_s": per_patch / audio_seconds_per_patch(cfg) / 1e12,
        "achieved_tflops": tflops,
        "peak_tflops": peak_tflops,
        "mfu": tflops / peak_tflops if peak_tflops else None,
    }


class _ContextAttention:
    """Attention of one new position over ``context_len`` cached keys plus its own (the paged step's products)."""

    def __init__(self, context_len: int) -> None:
        self.context_len = context_len

    def __call__(self, layer_idx: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        past = k.new_zeros(k.shape[0], k.shape[1], self.context_len, k.shape[3])
        k_all, v_all = torch.cat([past, k], dim=2), torch.cat([past, v], dim=2)
        return F.scaled_dot_product_attention(q, k_all, v_all, enable_gqa=True)


def count_step_flops(
    model: torch.nn.Module,
    vae: torch.nn.Module,
    *,
    inference_timesteps: int = 10,
    context_len: int = 0,
    math_sdpa: bool = True,
) -> dict[str, float]:
    """One decode step of one request through the real modules, counted by ``FlopCounterMode``, by part.

    The calls are the ones ``ModelRunner`` makes for a decoding row (base LM, FSQ, residual LM,
    DiT condition, the sampler, the local encoder, the stop head) plus the engine's streamed VAE
    decode of the patch. SDPA runs on the math backend so that its products are counted on the
    CPU too (the CPU flash kernel is invisible to the counter; ``math_sdpa=False`` shows that).
    Works on ``meta`` modules (where SDPA always decomposes into counted matmuls).

    Args:
        model: A :class:`~voxcpm_engine.model.voxcpm.VoxCPMModel` (any device and dtype).
        vae: Its :class:`~voxcpm_engine.model.audio_vae.AudioVAE`.
        inference_timesteps: Euler steps of the sampler.
        context_len: Positions already cached (see :func:`step_flops`).
        math_sdpa: Force the math SDPA backend.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    cfg: ModelConfig = model.config
    dev, dt = model.device, model.dtype
    h = cfg.lm.hidden_size
    counts: dict[str, float] = dict.fromkeys(PARTS, 0.0)

    def counted(part: str) -> Any:
        mode = FlopCounterMode(display=False)

        class _Add:
            def __enter__(self) -> None:
                mode.__enter__()

            def __exit__(self, *exc: object) -> None:
                mode.__exit__(*exc)
                counts[part] += mode.get_total_flops()

        return _Add()

    pos = torch.full((1, 1), context_len, dtype=torch.long, device=dev)
    attention = _ContextAttention(context_len)
    grad = torch.inference_mode() if dev.type != "meta" else nullcontext()
    backend = sdpa_kernel(SDPBackend.MATH) if math_sdpa else nullcontext()
    with grad, backend:
        embed = torch.randn(1, h, device=dev, dtype=dt)
        with counted("base_lm"):
            hidden = model.base_lm(embed[:, None], pos, attention)[:, 0]
        with counted("projections"):
            hidden = model.quantize(hidden)
            residual_in = model.residual_input(hidden, embed)
        with counted("residual_lm"):
            residual = model.residual_lm(residual_in[:, None], pos, attention)[:, 0]
        with counted("projections"):
            mu = model.dit_condition(hidden, residual)
        noise = torch.randn(1, cfg.feat_dim, cfg.patch_size, device=dev, dtype=dt)
        with counted("dit_sampler"):
            sample = model.sample_patch(noise, mu, noise, n_timesteps=inference_timesteps, cfg_value=2.0)
        with counted("local_encoder"):
            model.encode_patches(sample.transpose(1, 2).unsqueeze(1))
        with counted("projections"):
            model.stop_logits(hidden)
        state = vae.new_stream_state(1)
        with counted("vae_decode"):
            vae.decode_stream(sample.float(), state)
    counts["total"] = sum(counts[p] for p in PARTS)
    return counts


def build_meta(cfg: ModelConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The model (bf16) and AudioVAE of ``cfg`` on the meta device (shapes only, instant)."""
    from voxcpm_engine.model.audio_vae import AudioVAE
    from voxcpm_engine.model.voxcpm import VoxCPMModel

    model = VoxCPMModel.build(cfg, device="meta", dtype=torch.bfloat16)
    with torch.device("meta"):
        vae = AudioVAE(cfg.audio_vae)
    return model, vae


def format_breakdown(cfg: ModelConfig, parts: dict[str, float], counted: dict[str, float] | None = None) -> str:
    """A small table of GFLOP per part (and the counted figures beside it when given)."""
    per_s = 1.0 / audio_seconds_per_patch(cfg)
    lines = [f"{'part':<14} {'GFLOP':>10}" + (f" {'counted':>10}" if counted else "") + f" {'share':>7}"]
    for part in (*PARTS, "total"):
        row = f"{part:<14} {parts[part] / 1e9:10.4f}"
        if counted:
            row += f" {counted[part] / 1e9:10.4f}"
        lines.append(row + f" {parts[part] / parts['total']:7.1%}")
    lines.append(f"TFLOP per audio second: {parts['total'] * per_s / 1e12:.4g} ({per_s:.2f} patches/s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m perf.flops``: the closed form and the counted figures for presets or a checkpoint."""
    from voxcpm_engine.config.presets import PRESETS, preset_config

    ap = argparse.ArgumentParser(prog="python -m perf.flops", description=__doc__.splitlines()[0])
    ap.add_argument("--preset", nargs="+", default=["voxcpm1.5", "voxcpm2"], choices=list(PRESETS))
    ap.add_argument("--timesteps", type=int, default=10, help="sampler Euler steps")
    ap.add_argument("--context-len", type=int, default=0, help="positions already cached")
    ap.add_argument("--no-count", action="store_true", help="skip FlopCounterMode on meta modules")
    args = ap.parse_args(argv)
    for name in args.preset:
        cfg = ModelConfig.from_dict(preset_config(name), where=name)
        parts = step_flops(cfg, inference_timesteps=args.timesteps, context_len=args.context_len)
        counted = None
        if not args.no_count:
            model, vae = build_meta(cfg)
            counted = count_step_flops(model, vae, inference_timesteps=args.timesteps, context_len=args.context_len)
        print(f"== {name} (context {args.context_len}, {args.timesteps} timesteps)")
        print(format_breakdown(cfg, parts, counted))
        whole = step_flops(cfg, inference_timesteps=args.timesteps, vae_streaming=False)["total"]
        cpu = step_flops(cfg, inference_timesteps=args.timesteps, vae_streaming=False, attention_products=False)
        print(f"with a whole-utterance VAE decode instead of the streamed one: {whole / 1e9:.4f} GFLOP")
        print(f"... and without attention products (a CPU FlopCounterMode count): {cpu['total'] / 1e9:.4f} GFLOP")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
