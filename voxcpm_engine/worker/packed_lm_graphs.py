"""Both LMs over a packed step (prefill chunks beside decode tokens), replayed as CUDA graphs.

A step that is not pure decode (a new request's prompt, alone or beside running streams) runs
both LMs over a packed batch of positions. Eagerly that is a few hundred small launches whose host
cost, not the GPU's work, sets a new request's first step (about 17 ms for VoxCPM1.5 on an H200
against well under 1 ms of kernels). :class:`PackedLMGraphs` captures that forward once per
(padded token count, padded sequence count) and replays it with the step's inputs copied into
static buffers; the embeddings before it and the sampler after it stay as they are.

Padding keeps every shape static without touching real work:
  * sequences after the real ones are empty (no query tokens, one key of block 0);
  * one last sequence holds the padding tokens: they store no K/V (slot ``-1``), read keys of
    block 0 (finite garbage; their outputs are dropped) and sit at RoPE position 0.
Causal attention never lets a real token see a padding token, so the real rows equal the eager
step's up to the GEMMs' choice of tiling for the padded row count.

Rows on a LoRA voice run eagerly (their adapter routing is per token). Off CUDA (tests) the same
static-buffer forward runs eagerly, so the padding and buffer filling are exercised on the CPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from voxcpm_engine.worker.paged_kv import BatchLayout, PagedAttention

if TYPE_CHECKING:  # the runner imports this module
    from voxcpm_engine.sched.scheduler import ScheduledRow
    from voxcpm_engine.worker.runner import ModelRunner

log = logging.getLogger(__name__)


def _doubling(first: int, limit: int) -> list[int]:
    """``first``, twice that, ... while below ``limit``, then ``limit`` itself."""
    sizes, size = [], first
    while size < limit:
        sizes.append(size)
        size *= 2
    return sizes + [limit]


def token_buckets(max_tokens: int) -> list[int]:
    """Padded token counts: 16, 32, 64, ... doubling below ``max_tokens``, then ``max_tokens`` itself."""
    return _doubling(16, max_tokens)


def seq_buckets(max_seqs: int) -> list[int]:
    """Padded sequence counts: 1, 2, 4, ... doubling below ``max_seqs``, then ``max_seqs`` itself."""
    return _doubling(1, max_seqs)


class PackedLMGraphs:
    """Runs the LMs of non-decode steps on static buffers; on CUDA as captured graphs.

    Args:
        runner: The :class:`voxcpm_engine.worker.runner.ModelRunner` whose model and caches are used.
        max_tokens: Largest packed step (the engine's ``max_num_batched_tokens``).
        max_seqs: Most sequences in one step (the engine's ``max_num_seqs``).
        max_model_len: Longest sequence (sizes the block tables).
        capture: Capture CUDA graphs (requires a CUDA model); ``False`` runs the same forward eagerly.
        on_capture: Called with ``(graphs captured, graphs)`` after each capture (start-up progress).
    """

    def __init__(
        self,
        runner: ModelRunner,
        max_tokens: int,
        max_seqs: int,
        max_model_len: int,
        *,
        capture: bool,
        on_capture: Callable[[int, int], None] | None = None,
    ) -> None:
        self.runner = runner
        self.token_sizes = token_buckets(max_tokens)
        self.seq_sizes = seq_buckets(min(max_seqs, max_tokens))
        self.max_tokens, self.max_seqs = self.token_sizes[-1], self.seq_sizes[-1]
        self.max_model_len = max_model_len
        bs = runner.block_size
        # The padding sequence may be as long as the largest step: its table must reach that far.
        self.table_width = max(-(-max_model_len // bs), -(-self.max_tokens // bs))
        model, cfg = runner.model, runner.cfg
        dev, dtype = model.device, model.dtype
        t, s = self.max_tokens, self.max_seqs + 1  # + the padding sequence
        hidden = cfg.base_lm_config().hidden_size
        self.x = torch.zeros(t, hidden, dtype=dtype, device=dev)
        self.audio_embed = torch.zeros(t, hidden, dtype=dtype, device=dev)
        self.text_mask = torch.zeros(t, 1, dtype=torch.int32, device=dev)
        self.audio_mask = torch.ones(t, 1, dtype=torch.int32, device=dev)
        self.out_hidden = torch.zeros(t, hidden, dtype=dtype, device=dev)
        self.out_residual = torch.zeros(t, cfg.residual_lm_config().hidden_size, dtype=dtype, device=dev)
        # Integer inputs: filled in a pinned host mirror, uploaded with one copy each per step.
        pin = dev.type == "cuda"
        self.host_i64 = torch.zeros(2, t, dtype=torch.long, pin_memory=pin)  # positions | slots
        self.host_i32 = torch.zeros(s + 1 + s + s * self.table_width, dtype=torch.int32, pin_memory=pin)
        self.i64 = self.host_i64.to(dev)
        self.i32 = self.host_i32.to(dev)
        self._uploaded: torch.cuda.Event | None = None
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.capture_s = 0.0
        self._on_capture = on_capture
        if capture:
            self._capture_all()

    # --- eligibility ---------------------------------------------------------------------------

    def accepts(self, rows: list[ScheduledRow]) -> bool:
        """Whether these rows fit a bucket and none routes through a LoRA adapter."""
        if not rows or len(rows) > self.max_seqs or sum(r.count for r in rows) > self.max_tokens:
            return False
        return not (self.runner.lora_enabled and any(r.request.lora_slot for r in rows))

    def _bucket(self, sizes: list[int], n: int) -> int:
        return next(s for s in sizes if s >= n)

    def shape_for(self, rows: list[ScheduledRow]) -> tuple[int, int]:
        """The (padded tokens, padded sequences) a step of these rows runs at."""
        tokens = self._bucket(self.token_sizes, sum(r.count for r in rows))
        return tokens, self._bucket(self.seq_sizes, min(len(rows), tokens))

    # --- the step ------------------------------------------------------------------------------

    def _layout(self, tokens: int, seqs: int) -> BatchLayout:
        s = seqs + 1
        w, total = self.table_width, self.max_seqs + 1
        return BatchLayout(
            positions=self.i64[0, :tokens],
            slot_mapping=self.i64[1, :tokens],
            cu_seqlens_q=self.i32[: s + 1],
            seq_lens=self.i32[total + 1 : total + 1 + s],
            block_tables=self.i32[2 * total + 1 :].view(total, w)[:s],
            max_seqlen_q=tokens,  # any value above 1 selects the prefill tile, which every shape here uses
            max_seqlen_k=self.max_model_len,
        )

    def _forward(self, tokens: int, seqs: int) -> None:
        """Both LMs over the first ``tokens`` buffer rows; the states go to ``out_hidden`` / ``out_residual``."""
        runner, model = self.runner, self.runner.model
        layout = self._layout(tokens, seqs)
        x, tm, am = self.x[:tokens], self.text_mask[:tokens], self.audio_mask[:tokens]
        positions = layout.positions.view(-1, 1)
        hidden = model.base_lm(x[:, None], positions, PagedAttention(runner.base_cache, layout, runner.backend))[:, 0]
        hidden = model.quantize(hidden) * am + hidden * tm
        residual_in = model.residual_input(hidden, am * self.audio_embed[:tokens])
        residual = model.residual_lm(
            residual_in[:, None], positions, PagedAttention(runner.residual_cache, layout, runner.backend)
        )[:, 0]
        self.out_hidden[:tokens].copy_(hidden)
        self.out_residual[:tokens].copy_(residual)

    def _fill_layout(self, spans: list[tuple[int, int, list[int]]], tokens: int, seqs: int) -> None:
        """Write the layout of ``(start, count, block_table)`` spans, padded to the shape, and upload it."""
        if self._uploaded is not None:
            self._uploaded.synchronize()  # the mirror's previous contents are still being copied
        bs, w, total = self.runner.block_size, self.table_width, self.max_seqs + 1
        i64, i32 = self.host_i64.numpy(), self.host_i32.numpy()
        cu, lens = i32[: total + 1], i32[total + 1 : 2 * total + 1]
        tables = i32[2 * total + 1 :].reshape(total, w)
        end = 0
        for i, (start, count, table) in enumerate(spans):
            pos = np.arange(start, start + count)
            i64[0, end : end + count] = pos
            i64[1, end : end + count] = np.asarray(table)[pos // bs] * bs + pos % bs
            cu[i], lens[i] = end, start + count
            tables[i, : len(table)] = table
            tables[i, len(table) :] = 0
            end += count
        n = len(spans)
        cu[n:seqs], lens[n:seqs], tables[n:seqs] = end, 1, 0  # empty sequences
        pad = tokens - end
        i64[0, end:tokens], i64[1, end:tokens] = 0, -1
        cu[seqs], lens[seqs], tables[seqs] = end, max(pad, 1), 0
        cu[seqs + 1] = tokens
        self.i64.copy_(self.host_i64, non_blocking=True)
        self.i32.copy_(self.host_i32, non_blocking=True)
        if self.i64.is_cuda:
            self._uploaded = torch.cuda.Event()
            self._uploaded.record()

    @torch.inference_mode()
    def run(
        self, rows: list[ScheduledRow], x: Tensor, audio_embed: Tensor, text_mask: Tensor, audio_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Both LMs over the rows' packed inputs (see :meth:`accepts`).

        Returns:
            ``(hidden, residual)`` of the packed positions, views of the static outputs: read
            them before the next step.
        """
        n = x.shape[0]
        tokens, seqs = self.shape_for(rows)
        self._fill_layout([(r.start, r.count, r.request.block_table) for r in rows], tokens, seqs)
        self.x[:n].copy_(x)
        self.audio_embed[:n].copy_(audio_embed)
        self.text_mask[:n].copy_(text_mask)
        self.audio_mask[:n].copy_(audio_mask)
        graph = self.graphs.get((tokens, seqs))
        if graph is not None:
            graph.replay()
        else:
            self._forward(tokens, seqs)
        return self.out_hidden[:n], self.out_residual[:n]

    # --- capture -------------------------------------------------------------------------------

    def shapes(self) -> list[tuple[int, int]]:
        """Every (tokens, sequences) shape served, largest first."""
        return [(t, s) for t in reversed(self.token_sizes) for s in reversed(self.seq_sizes) if s <= t]

    @torch.inference_mode()
    def _capture_all(self) -> None:
        """Capture every shape, largest first so the shared memory pool is sized once."""
        start = time.perf_counter()
        pool = None
        stream = torch.cuda.Stream(device=self.runner.model.device)
        shapes = self.shapes()
        for tokens, seqs in shapes:
            self._fill_layout([], tokens, seqs)  # all padding: a valid layout that stores nothing
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._forward(tokens, seqs)  # compiles kernels, settles the allocator
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, stream=stream):
                self._forward(tokens, seqs)
            pool = graph.pool()
            self.graphs[(tokens, seqs)] = graph
            if self._on_capture is not None:
                self._on_capture(len(self.graphs), len(shapes))
        torch.cuda.synchronize()
        self.capture_s = time.perf_counter() - start
        log.info(
            "captured %d packed-LM CUDA graphs (tokens %s x sequences %s) in %.1f s",
            len(self.graphs),
            self.token_sizes,
            self.seq_sizes,
            self.capture_s,
        )
