"""Batched streaming VAE decode for the engine: per-request decoder state in slots, one call per step.

Each request's causal decoder state (the left context of ~40 convolutions, spec §6.6) lives in one
row of a flat ``[slots, width]`` tensor, so a step gathers its rows with one ``index_select`` and
writes them back with one ``index_copy_``, whatever the number of convolutions. The decode itself
runs on static buffers (``z``, gathered state, output), padded to a batch bucket; on CUDA each
bucket is a captured graph, which removes the hundreds of small launches a decoder call costs.

Everything a decode reads and keeps (slots, latents, gathered state) is in the VAE's decode dtype
(``EngineConfig.vae_dtype``: bf16 halves the bytes of a memory-bound step); the output buffer is
in the parameters' dtype (fp32), so the audio is converted once, inside the decode (or graph).

On CUDA the decodes may run on a stream of their own (``side_stream``): a step's decode then waits
only for that step's patches, and the next step's LMs and sampler, queued on the caller's stream
right after, run beside it instead of behind it. Every use of the slots is on that stream, and a
tensor made on the caller's stream is kept from reuse until the decode that reads it is done.

Off CUDA the same static forward runs eagerly (tests cover it in CI).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from voxcpm_engine.model.audio_vae import AudioVAE, StreamingDecoderState, conv_flags
from voxcpm_engine.worker.decode_graphs import batch_buckets

log = logging.getLogger(__name__)


class VaeStreams:
    """Decoder state slots of the engine's streams and the batched decode of one patch per stream.

    Args:
        vae: The model's AudioVAE.
        frames_per_step: Latent frames each stream decodes per step (the patch size).
        max_batch: Most streams decoded in one step (the engine's ``max_num_seqs``).
        capture: Capture a CUDA graph per batch bucket (the VAE must be on CUDA).
        on_capture: Called with ``(graphs captured, graphs)`` after each capture (start-up progress).
        side_stream: On CUDA, decode on a stream of the VAE's own (see the module docstring).
    """

    def __init__(
        self,
        vae: AudioVAE,
        frames_per_step: int,
        max_batch: int,
        *,
        capture: bool,
        on_capture: Callable[[int, int], None] | None = None,
        side_stream: bool = False,
    ) -> None:
        self.vae = vae
        self.frames = frames_per_step
        self.max_batch = max_batch
        shapes = vae.stream_shapes
        self._sizes = [c * ctx for c, ctx in shapes]
        self._shapes = shapes
        self.width = sum(self._sizes)
        self.device = vae.device
        self.stream = torch.cuda.Stream(device=self.device) if side_stream and self.device.type == "cuda" else None
        dtype = vae.decode_dtype
        self._slots = torch.zeros(0, self.width, dtype=dtype, device=self.device)
        self._slot_of: dict[str, int] = {}
        self._free: list[int] = []
        self._bucket = vae.sample_rate_bucket(None, self.device)
        self.buckets = batch_buckets(max_batch)
        self._z = torch.zeros(max_batch, vae.latent_dim, frames_per_step, dtype=dtype, device=self.device)
        self._state = torch.zeros(max_batch, self.width, dtype=dtype, device=self.device)
        hop = vae.decode_hop  # the audio itself stays fp32 for the host (see the module docstring)
        self._out = torch.zeros(max_batch, 1, frames_per_step * hop, dtype=vae.dtype, device=self.device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.capture_s = 0.0
        self._on_capture = on_capture
        if capture:
            self._capture_all()

    # --- slots ---------------------------------------------------------------------------------

    def flatten(self, state: StreamingDecoderState) -> Tensor:
        """``[B, width]`` rows of a list-of-buffers state (the layout of a slot)."""
        return torch.cat([b.reshape(b.shape[0], -1) for b in state.buffers], dim=1)

    def admit(self, request_id: str, warm: StreamingDecoderState | None) -> None:
        """Give a stream a slot, starting from ``warm`` (a one-row state, e.g. after a prompt warm-up)
        or, for ``None``, from zeros (a free slot is always zero: see :meth:`release`)."""
        if request_id in self._slot_of:
            raise ValueError(f"stream {request_id!r} already has a VAE slot")
        if not self._free:  # grow by doubling; slots outlive steps, so this is rare (graphs never see _slots)
            start, grow = self._slots.shape[0], max(8, self._slots.shape[0])
            self._slots = torch.cat([self._slots, self._slots.new_zeros(grow, self.width)])
            self._free.extend(range(start + grow - 1, start - 1, -1))
        slot = self._slot_of[request_id] = self._free.pop()
        if warm is not None:
            if self.stream is not None:  # made on the caller's stream, read on ours
                for buffer in warm.buffers:
                    buffer.record_stream(self.stream)
            self._slots[slot] = self.flatten(warm)[0]

    def release(self, request_id: str) -> None:
        """Free a stream's slot and zero it (no-op for a stream without one).

        Zeroing here, one queued fill when a stream ends, keeps a whole burst of new streams from
        paying a state allocation and a copy each on the step that decodes their first audio. The
        fill is queued on the stream behind any decode still writing this slot back.
        """
        slot = self._slot_of.pop(request_id, None)
        if slot is not None:
            side = torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
            with torch.inference_mode(), side:  # _slots may have been made under inference mode (a growth in a step)
                self._slots[slot].zero_()
            self._free.append(slot)

    def has(self, request_id: str) -> bool:
        """Whether the stream holds a slot."""
        return request_id in self._slot_of

    @property
    def num_slots(self) -> int:
        """Slots allocated (held + free)."""
        return self._slots.shape[0]

    @property
    def num_held(self) -> int:
        """Slots held by streams."""
        return len(self._slot_of)

    @property
    def num_free(self) -> int:
        """Slots free."""
        return len(self._free)

    # --- decode --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def on_stream(self, *inputs: Tensor) -> Iterator[None]:
        """Run the block on the decode stream: with a side stream, after all work queued so far on the
        caller's stream, with ``inputs`` (tensors made there) kept from reuse until the block's work is
        done; without one, as is. Admissions, decodes and the copies of their output go in here."""
        if self.stream is None:
            yield
            return
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        for tensor in inputs:
            tensor.record_stream(self.stream)
        with torch.cuda.stream(self.stream):
            yield

    def _forward(self, n: int) -> None:
        """Decode the first ``n`` rows of the static buffers; new tails go back into ``_state``."""
        offsets, views = 0, []
        for (c, ctx), size in zip(self._shapes, self._sizes, strict=True):
            views.append(self._state[:n, offsets : offsets + size].view(n, c, ctx))
            offsets += size
        stream = list(views)
        with conv_flags(self.vae.tf32_convs, benchmark=True):  # static shapes: let cuDNN pick
            y = self.vae.decoder(self._z[:n], self._bucket, stream)
        for view, tail in zip(views, stream, strict=True):
            view.copy_(tail)
        self._out[:n].copy_(y)  # the one conversion to fp32 of a bf16 decode (none for fp32)

    @torch.inference_mode()
    def decode(self, request_ids: list[str], frames: Tensor) -> Tensor:
        """Decode the next frames of each stream (all must hold slots); returns ``[B, samples]``.

        Args:
            request_ids: One stream per row, no repeats.
            frames: ``[B, latent_dim, frames_per_step]`` latent frames.

        Returns:
            A view of the static output buffer: read (or copy) it before the next call.
        """
        n = len(request_ids)
        if n > self.max_batch:
            raise ValueError(f"{n} streams in one VAE step, more than max_batch {self.max_batch}")
        padded = next(s for s in self.buckets if s >= n)
        idx = torch.tensor([self._slot_of[r] for r in request_ids], dtype=torch.long).to(self.device, non_blocking=True)
        torch.index_select(self._slots, 0, idx, out=self._state[:n])
        self._z[:n].copy_(frames)
        graph = self.graphs.get(padded)
        if graph is not None:
            graph.replay()
        else:
            self._forward(padded)
        self._slots.index_copy_(0, idx, self._state[:n])
        return self._out[:n, 0]

    @torch.inference_mode()
    def _capture_all(self) -> None:
        """One graph per bucket, largest first so the memory pool is sized once."""
        start = time.perf_counter()
        pool = None
        stream = torch.cuda.Stream(device=self.device)
        for size in reversed(self.buckets):
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._forward(size)  # picks cuDNN algorithms, settles the allocator
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, stream=stream):
                self._forward(size)
            pool = graph.pool()
            self.graphs[size] = graph
            if self._on_capture is not None:
                self._on_capture(len(self.graphs), len(self.buckets))
        torch.cuda.synchronize()
        self.capture_s = time.perf_counter() - start
        log.info("captured %d VAE decode graphs in %.1f s", len(self.graphs), self.capture_s)
