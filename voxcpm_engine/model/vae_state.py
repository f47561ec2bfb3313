"""Per-stream causal decoder state of the AudioVAE's streaming decode (spec §6.6), for a batch of streams."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from voxcpm_engine.model.vae_convs import StreamBuffers

Rows = int | slice | Sequence[int] | Tensor
"""Row selector of a :class:`StreamingDecoderState`: index, slice, index list / tensor or bool mask."""


@dataclass
class StreamingDecoderState:
    """Causal left context of every stateful decoder convolution, for a batch of independent streams.

    ``buffers[k]`` is ``[B, C_k, ctx_k]``: the last ``ctx_k`` inputs seen by stateful conv ``k``
    (``ctx`` = left pad for causal convs, one frame for transposed convs). Row ``r`` of every buffer
    belongs to stream ``r``. A zero row is exactly the zero padding of a whole decode, so a stream
    started from zeros reproduces :meth:`AudioVAE.decode` of its frames.

    Batch management for an engine that adds and removes streams between steps: :meth:`select`
    (gather / reorder / drop rows, returns a new state), :meth:`concat` (stack states),
    :meth:`reset_rows` (restart streams in their slots) and :meth:`assign_rows` (overwrite slots from
    another state). Row updates replace the tensors instead of writing into them, so states created
    under ``torch.inference_mode`` stay usable outside it and tensors handed out earlier never change.

    Attributes:
        buffers: One context tensor per stateful convolution, in the model's slot order.
    """

    buffers: StreamBuffers

    @property
    def batch_size(self) -> int:
        """Number of streams (rows)."""
        return self.buffers[0].shape[0]

    @property
    def device(self) -> torch.device:
        """Device of the buffers."""
        return self.buffers[0].device

    def _index(self, rows: Rows) -> Tensor:
        if isinstance(rows, slice):
            return torch.arange(self.batch_size, device=self.device)[rows]
        if isinstance(rows, int):
            rows = [rows]
        idx = torch.as_tensor(rows, device=self.device)
        if idx.dtype == torch.bool:
            return idx.nonzero().flatten()
        idx = idx.to(torch.long).flatten()
        return torch.where(idx < 0, idx + self.batch_size, idx)  # negative indices count from the end

    def select(self, rows: Rows) -> StreamingDecoderState:
        """A new state holding ``rows`` (in the given order; repeats allowed)."""
        idx = self._index(rows)
        return StreamingDecoderState([b.index_select(0, idx) for b in self.buffers])

    @classmethod
    def concat(cls, states: Sequence[StreamingDecoderState]) -> StreamingDecoderState:
        """Stack the rows of ``states`` (same model, same device) into one state."""
        if not states:
            raise ValueError("concat needs at least one state")
        return cls([torch.cat(parts, dim=0) for parts in zip(*(s.buffers for s in states), strict=True)])

    def reset_rows(self, rows: Rows) -> StreamingDecoderState:
        """Zero ``rows`` so they start new streams; returns ``self``."""
        idx = self._index(rows)
        self.buffers = [b.index_fill(0, idx, 0.0) for b in self.buffers]
        return self

    def assign_rows(self, rows: Rows, source: StreamingDecoderState) -> StreamingDecoderState:
        """Overwrite ``rows`` with the rows of ``source`` (one per index, in order); returns ``self``."""
        idx = self._index(rows)
        if source.batch_size != idx.numel():
            raise ValueError(f"assign_rows: {idx.numel()} rows but source has {source.batch_size}")
        self.buffers = [b.index_copy(0, idx, s.to(b.dtype)) for b, s in zip(self.buffers, source.buffers, strict=True)]
        return self

    def write_rows_(self, rows: Rows, source: StreamingDecoderState) -> StreamingDecoderState:
        """In-place :meth:`assign_rows` for an engine's long-lived slot state; returns ``self``.

        Writes into the existing tensors instead of replacing them, so a step costs the rows it
        touches rather than a copy of every slot. Only for states created outside inference mode.
        """
        idx = self._index(rows)
        if source.batch_size != idx.numel():
            raise ValueError(f"write_rows_: {idx.numel()} rows but source has {source.batch_size}")
        for b, s in zip(self.buffers, source.buffers, strict=True):
            b.index_copy_(0, idx, s.to(b.dtype))
        return self

    def clone(self) -> StreamingDecoderState:
        """A deep copy."""
        return StreamingDecoderState([b.clone() for b in self.buffers])

    def to(self, device: torch.device | str) -> StreamingDecoderState:
        """A copy on ``device`` (``self`` if already there)."""
        return StreamingDecoderState([b.to(device) for b in self.buffers])
