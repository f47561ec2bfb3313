"""The pure-decode step over static buffers, replayed as CUDA graphs.

Once every running request has its prompt in the cache, a step is the same work for each row:
one position through both LMs, the whole Euler loop of the DiT sampler (CFG batch included), the
local encoder and the stop head. On a GPU that is hundreds of small kernels whose launch cost
dominates at small batches, so :class:`DecodeGraphs` captures the step once per padded batch size
(and per LoRA on/off) and replays it with the inputs copied into static buffers.

What stays outside the graph, by design:
  * the noise: each request draws from its own ``torch.Generator`` (the same seed gives the same
    audio alone or in a crowd), then the draws are copied into the static noise buffer;
  * the batch layout (positions, cache slots, block tables), built on the host like the eager
    path's and copied in; padding rows get cache slot ``-1`` (their K/V is never stored) and one
    key of block 0 (finite garbage, their outputs are dropped);
  * the VAE decode (its streaming state lives in per-request slots, see ``voxcpm_engine.engine``).

The attention split-KV factor is fixed per captured size by bounding the keys with
``max_model_len`` instead of the step's longest sequence; that is the only difference from an
eager step (a different fp32 reduction order in attention).

Off CUDA (tests), :meth:`DecodeGraphs.run` executes the same static-buffer forward eagerly, so
padding, buffer filling and LoRA routing are exercised on the CPU too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from voxcpm_engine.lora.layers import set_lora_rows
from voxcpm_engine.worker.paged_kv import BatchLayout, PagedAttention

if TYPE_CHECKING:  # the runner imports this module
    from voxcpm_engine.sched.request import Request
    from voxcpm_engine.sched.scheduler import ScheduledRow
    from voxcpm_engine.worker.runner import ModelRunner

log = logging.getLogger(__name__)


def batch_buckets(max_batch: int) -> list[int]:
    """Padded batch sizes to capture: 1, 2, 4, 8, then every 16 up to ``max_batch`` (which is included)."""
    sizes = [s for s in (1, 2, 4, 8) if s < max_batch]
    sizes += list(range(16, max_batch, 16))
    return sorted(set(sizes + [max_batch]))


@dataclass
class DecodeOutputs:
    """Per-row results of a decode step (row order = the rows given), copied out of the static buffers.

    Attributes:
        patches: ``[B, P, D]`` new latent patches (model dtype).
        embeds: ``[B, H]`` their local-encoder embeddings (the next step's LM input).
        stops: ``[B]`` stop-head decisions, a host tensor filled by an asynchronous copy.
        ready: Recorded after that copy (CUDA); None when the values are already there.
    """

    patches: Tensor
    embeds: Tensor
    stops: Tensor
    ready: torch.cuda.Event | None


class _Buffers:
    """Static inputs and outputs of the decode step, sized for the largest bucket."""

    def __init__(self, runner: ModelRunner, max_batch: int, max_blocks: int) -> None:
        cfg, model = runner.cfg, runner.model
        dev, dtype = model.device, model.dtype
        hidden = cfg.base_lm_config().hidden_size
        n = max_batch
        self.embed = torch.zeros(n, hidden, dtype=dtype, device=dev)
        # The integer inputs live in two flat tensors, filled on the host in a (pinned) mirror and
        # uploaded with one copy each per step: positions | slots | LoRA ids, and seq_lens | tables.
        pin = dev.type == "cuda"
        self.host_i64 = torch.zeros(3, n, dtype=torch.long, pin_memory=pin)
        self.host_i32 = torch.zeros(n + n * max_blocks, dtype=torch.int32, pin_memory=pin)
        self.host_i64[1].fill_(-1)
        self.host_i32[:n].fill_(1)
        self.i64 = self.host_i64.to(dev)
        self.i32 = self.host_i32.to(dev)
        self.positions, self.slots, self.lora = self.i64[0], self.i64[1], self.i64[2]
        self.seq_lens = self.i32[:n]
        self.block_tables = self.i32[n:].view(n, max_blocks)
        self.uploaded: torch.cuda.Event | None = None  # the last upload (the host mirror is reused)
        self.cu_seqlens_q = torch.arange(n + 1, dtype=torch.int32, device=dev)
        self.noise = torch.zeros(n, cfg.feat_dim, cfg.patch_size, dtype=dtype, device=dev)
        self.cond = torch.zeros(n, cfg.feat_dim, cfg.patch_size, dtype=dtype, device=dev)
        self.cfg_value = torch.full((n,), 2.0, dtype=torch.float32, device=dev)
        self.lm_hidden = torch.zeros(n, hidden, dtype=dtype, device=dev)
        self.res_hidden = torch.zeros(n, cfg.residual_lm_config().hidden_size, dtype=dtype, device=dev)
        self.out_patches = torch.zeros(n, cfg.patch_size, cfg.feat_dim, dtype=dtype, device=dev)
        self.out_embeds = torch.zeros(n, hidden, dtype=dtype, device=dev)
        self.out_stops = torch.zeros(n, dtype=torch.bool, device=dev)
        self.host_stops = torch.zeros(n, dtype=torch.bool, pin_memory=pin)  # read within the step


class DecodeGraphs:
    """Runs pure-decode steps on static buffers; on CUDA as captured graphs.

    Args:
        runner: The :class:`voxcpm_engine.worker.runner.ModelRunner` whose model and caches are used.
        max_batch: Largest batch to serve this way (the engine's ``max_num_seqs``).
        max_model_len: Longest sequence (sizes the block tables and the attention split factor).
        timesteps: Sampler step counts served (each captured separately); other counts run eager.
        capture: Capture CUDA graphs (requires a CUDA model); ``False`` runs the same forward eagerly.
        on_capture: Called with ``(graphs captured, graphs)`` after each capture (start-up progress).
    """

    def __init__(
        self,
        runner: ModelRunner,
        max_batch: int,
        max_model_len: int,
        timesteps: tuple[int, ...],
        *,
        capture: bool,
        on_capture: Callable[[int, int], None] | None = None,
    ) -> None:
        self.runner = runner
        self.max_batch = max_batch
        self.max_model_len = max_model_len
        self.timesteps = tuple(sorted(set(timesteps)))
        self.buckets = batch_buckets(max_batch)
        self.max_blocks = -(-max_model_len // runner.block_size)
        self.bufs = _Buffers(runner, max_batch, self.max_blocks)
        self.capture_enabled = capture
        self.graphs: dict[tuple[str, int, int, bool], torch.cuda.CUDAGraph] = {}
        self.capture_s = 0.0
        self._on_capture = on_capture
        if capture:
            self._capture_all()

    # --- eligibility ---------------------------------------------------------------------------

    def accepts(self, rows: list[ScheduledRow]) -> bool:
        """Whether a step is pure decode of rows this object can serve (else the eager path runs)."""
        if not rows or len(rows) > self.max_batch:
            return False
        steps = rows[0].request.params.inference_timesteps
        if steps not in self.timesteps:
            return False
        for row in rows:
            req = row.request
            if (
                row.count != 1
                or row.start != req.num_positions - 1
                or row.start < req.prompt_len
                or req.embed is None
                or req.params.inference_timesteps != steps
            ):
                return False
        return True

    # --- the step ------------------------------------------------------------------------------

    def _forward(self, n: int, steps: int, lora: bool) -> None:
        """The decode step for the first ``n`` buffer rows, outputs written into the output buffers."""
        self._lm_forward(n, lora)
        self._sample_forward(n, steps, lora)

    def _lm_forward(self, n: int, lora: bool) -> None:
        """Both LMs over one position per row; the rows' states go to ``lm_hidden`` / ``res_hidden``."""
        b, runner = self.bufs, self.runner
        model = runner.model
        layout = BatchLayout(
            positions=b.positions[:n],
            slot_mapping=b.slots[:n],
            cu_seqlens_q=b.cu_seqlens_q[: n + 1],
            seq_lens=b.seq_lens[:n],
            block_tables=b.block_tables[:n],
            max_seqlen_q=1,
            max_seqlen_k=self.max_model_len,
        )
        slots = b.lora[:n] if lora else None
        x = b.embed[:n]
        positions = layout.positions.view(-1, 1)
        set_lora_rows(slots)
        hidden = model.base_lm(x[:, None], positions, PagedAttention(runner.base_cache, layout, runner.backend))[:, 0]
        hidden = model.quantize(hidden)
        residual_in = model.residual_input(hidden, x)
        residual = model.residual_lm(
            residual_in[:, None], positions, PagedAttention(runner.residual_cache, layout, runner.backend)
        )[:, 0]
        set_lora_rows(None)
        b.lm_hidden[:n].copy_(hidden)
        b.res_hidden[:n].copy_(residual)

    def _sample_forward(self, n: int, steps: int, lora: bool) -> None:
        """DiT sampler, local encoder and stop head for the states in ``lm_hidden`` / ``res_hidden``."""
        b, model = self.bufs, self.runner.model
        slots = b.lora[:n] if lora else None
        hidden = b.lm_hidden[:n]
        set_lora_rows(slots)
        mu = model.dit_condition(hidden, b.res_hidden[:n])
        set_lora_rows(torch.cat([slots, slots]) if slots is not None else None)  # the CFG batch [cond | uncond]
        sample = model.sample_patch(b.noise[:n], mu, b.cond[:n], n_timesteps=steps, cfg_value=b.cfg_value[:n])
        set_lora_rows(slots)
        patches = sample.transpose(1, 2)
        embeds = model.encode_patches(patches.unsqueeze(1))[:, 0]
        set_lora_rows(None)
        b.out_patches[:n].copy_(patches)
        b.out_embeds[:n].copy_(embeds)
        b.out_stops[:n].copy_(model.stop_logits(hidden).argmax(dim=-1) == 1)

    def _bucket(self, n: int) -> int:
        return next(s for s in self.buckets if s >= n)

    def _host_mirror(self) -> tuple:
        """numpy views of the host mirror, once the previous upload from it has finished."""
        b = self.bufs
        if b.uploaded is not None:
            b.uploaded.synchronize()
        return b.host_i64.numpy(), b.host_i32.numpy()

    def _upload(self) -> None:
        b = self.bufs
        b.i64.copy_(b.host_i64, non_blocking=True)
        b.i32.copy_(b.host_i32, non_blocking=True)
        if b.i64.is_cuda:
            b.uploaded = torch.cuda.Event()
            b.uploaded.record()

    def _fill(self, rows: list[ScheduledRow], padded: int) -> bool:
        """Copy the rows' inputs into the buffers (padding rows after them); returns whether any row uses LoRA."""
        b, bs = self.bufs, self.runner.block_size
        n, size = len(rows), self.max_batch
        reqs = [r.request for r in rows]
        i64, i32 = self._host_mirror()
        positions = [r.start for r in rows]
        i64[0, :n] = positions
        i64[0, n:padded] = 0
        i64[1, :n] = [req.block_table[p // bs] * bs + p % bs for req, p in zip(reqs, positions, strict=True)]
        i64[1, n:padded] = -1  # padding rows store no K/V
        i32[:n] = [p + 1 for p in positions]
        i32[n:padded] = 1
        tables = i32[size:].reshape(size, self.max_blocks)
        tables[:padded] = 0
        for i, req in enumerate(reqs):
            tables[i, : len(req.block_table)] = req.block_table
        b.embed[:n].copy_(torch.stack([req.embed for req in reqs]))
        return self._fill_sampling(reqs, padded, mirror=(i64, i32))

    def _fill_sampling(self, reqs: list[Request], padded: int, mirror: tuple | None = None) -> bool:
        """Noise, conditioning patch, guidance and LoRA slot of each row, then the upload of the integer inputs.

        Returns whether any row uses LoRA.
        """
        b, runner, n = self.bufs, self.runner, len(reqs)
        b.cond[:n].copy_(torch.stack([runner.cond_patch(req) for req in reqs]).transpose(1, 2))
        runner.noise(reqs, out=b.noise[:n])
        b.cfg_value[:n].copy_(torch.tensor([req.params.cfg_value for req in reqs], dtype=torch.float32))
        lora_slots = [req.lora_slot for req in reqs]
        uses_lora = runner.lora_enabled and any(lora_slots)
        i64, _ = mirror if mirror is not None else self._host_mirror()
        i64[2, :n] = lora_slots
        i64[2, n:padded] = 0
        self._upload()
        return uses_lora

    @torch.inference_mode()
    def run(self, rows: list[ScheduledRow]) -> DecodeOutputs:
        """One pure-decode step of ``rows`` (see :meth:`accepts`); updates nothing on the requests."""
        n = len(rows)
        padded = self._bucket(n)
        steps = rows[0].request.params.inference_timesteps
        lora = self._fill(rows, padded)
        graph = self.graphs.get(("decode", padded, steps, lora))
        if graph is not None:
            graph.replay()
        else:
            self._forward(padded, steps, lora)
        return self._outputs(n)

    def accepts_sampling(self, requests: list[Request]) -> bool:
        """Whether these rows can sample on static buffers (one captured step count, within the batch limit)."""
        if not requests or len(requests) > self.max_batch:
            return False
        steps = requests[0].params.inference_timesteps
        return steps in self.timesteps and all(r.params.inference_timesteps == steps for r in requests)

    @torch.inference_mode()
    def sample(self, requests: list[Request]) -> DecodeOutputs:
        """Sample the next patch of requests whose LM states are set (e.g. after a prefill chunk, eager LMs)."""
        n = len(requests)
        padded = self._bucket(n)
        steps = requests[0].params.inference_timesteps
        b = self.bufs
        b.lm_hidden[:n].copy_(torch.stack([r.lm_hidden for r in requests]))
        b.res_hidden[:n].copy_(torch.stack([r.residual_hidden for r in requests]))
        lora = self._fill_sampling(requests, padded)
        graph = self.graphs.get(("sample", padded, steps, lora))
        if graph is not None:
            graph.replay()
        else:
            self._sample_forward(padded, steps, lora)
        return self._outputs(n)

    def _outputs(self, n: int) -> DecodeOutputs:
        """Copies of the outputs; the stop flags go to the host without waiting for them (no sync here)."""
        b = self.bufs
        stops = b.host_stops[:n]
        stops.copy_(b.out_stops[:n], non_blocking=True)
        ready = None
        if b.out_stops.is_cuda:
            ready = torch.cuda.Event()
            ready.record()
        return DecodeOutputs(b.out_patches[:n].clone(), b.out_embeds[:n].clone(), stops, ready)

    # --- capture -------------------------------------------------------------------------------

    @torch.inference_mode()
    def _capture_all(self) -> None:
        """Capture every (bucket, timesteps, LoRA) variant, largest first so the pool is sized once."""
        start = time.perf_counter()
        pool = None
        variants = [False, True] if self.runner.lora_enabled else [False]
        stream = torch.cuda.Stream(device=self.runner.model.device)
        total = len(self.timesteps) * len(variants) * len(self.buckets) * 2
        for steps in self.timesteps:
            for lora in variants:
                for size in reversed(self.buckets):
                    for kind, fn in (("decode", self._forward), ("sample", self._sample_forward)):
                        stream.wait_stream(torch.cuda.current_stream())
                        with torch.cuda.stream(stream):
                            fn(size, steps, lora)  # compiles kernels, settles the allocator
                        torch.cuda.current_stream().wait_stream(stream)
                        graph = torch.cuda.CUDAGraph()
                        with torch.cuda.graph(graph, pool=pool, stream=stream):
                            fn(size, steps, lora)
                        pool = graph.pool()
                        self.graphs[(kind, size, steps, lora)] = graph
                        if self._on_capture is not None:
                            self._on_capture(len(self.graphs), total)
        torch.cuda.synchronize()
        self.capture_s = time.perf_counter() - start
        log.info(
            "captured %d CUDA graphs (batch sizes %s, timesteps %s, LoRA %s) in %.1f s",
            len(self.graphs),
            self.buckets,
            self.timesteps,
            variants,
            self.capture_s,
        )
