"""LoRA adapters (spec §9): batched multi-adapter application (files: :mod:`voxcpm_engine.io.lora_files`).

 :func:`enable_lora` swaps the targeted ``nn.Linear`` modules for :class:`LoRALinear`
(same ``weight``/``bias`` parameters, so state-dict keys do not change; the per-slot adapter
buffers are non-persistent). Slot 0 means "no adapter" and stays zero. Before a forward the caller
says which slot each row uses with :func:`set_lora_rows` (a process-global context, like
nano-vllm's): a "row" is the leading batch index of each LoRA Linear's input (``[B, T, in]`` or
``[N, in]``). The DiT runs a CFG batch of ``2B`` rows laid out ``[cond rows | uncond rows]``
(``voxcpm_engine.model.sampler``): both rows of a request use its adapter, so the caller sets
``slot_ids.repeat(2)`` around the sampler call. A single slot for every row (:func:`set_lora_rows`
with an int, or equal host ids) works for any input shape and computes exactly the reference's
formula; mixed slots project every row onto every slot's ``A`` and keep its own slot's part
(one-hot), or, after :meth:`AdapterSlots.use_kernels` (the engine's CUDA path), take the segmented
kernels of :mod:`voxcpm_engine.kernels.lora`: rows sorted by slot, only their own slot's matrices, two
launches per group of layers reading one input (:func:`add_adapters_`: q/k/v, gate/up). Both equal
the per-row formula up to the matmuls' fp32 accumulation order.

The uniform/mixed choice is made on the host when the ids are set. For CUDA graphs, capture with a
static int64 device tensor of ids (always the mixed path, no host sync) and update it in place
before each replay.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voxcpm_engine.io.checkpoint import listing
from voxcpm_engine.io.lora_files import Adapter, AdapterError, default_lora_targets

# ---------------------------------------------------------------------------- row → slot context


class LoRARows:
    """Which adapter slot each row of the next forward uses.

    ``uniform`` is known on the host when every row uses the same slot: the Linear then takes a
    plain (bit-exact with the reference) path, or none at all for slot 0. Otherwise ``slot_ids``
    ``[N]`` is gathered per row; device copies are made once per device and reused by every layer.
    """

    def __init__(self, uniform: int | None, slot_ids: Tensor | None) -> None:
        self.uniform = uniform
        self.slot_ids = slot_ids
        self._on: dict[torch.device, Tensor] = {} if slot_ids is None else {slot_ids.device: slot_ids}
        self._one_hot: dict[tuple[torch.device, int, torch.dtype], Tensor] = {}
        self._sorted: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def sorted_on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(order, slots in that order)``: the rows stably sorted by slot (for the segmented kernels)."""
        hit = self._sorted.get(device)
        if hit is None:
            ordered, order = torch.sort(self.ids_on(device), stable=True)
            hit = self._sorted[device] = (order, ordered)
        return hit

    def one_hot_on(self, device: torch.device, num_slots: int, dtype: torch.dtype) -> Tensor:
        """``[N, num_slots]`` one-hot rows of the slot ids (made once per step, shared by every layer)."""
        key = (device, num_slots, dtype)
        hot = self._one_hot.get(key)
        if hot is None:
            hot = self._one_hot[key] = F.one_hot(self.ids_on(device), num_slots).to(dtype)
        return hot

    def ids_on(self, device: torch.device) -> Tensor:
        """The slot ids on ``device`` (int64 ``[N]``)."""
        ids = self._on.get(device)
        if ids is None:
            assert self.slot_ids is not None, "uniform rows have no per-row ids"
            ids = self._on[device] = self.slot_ids.to(device, non_blocking=True)
        return ids


_ROWS: LoRARows | None = None  # process-global like nano-vllm's Context: the step loop is single-threaded


def set_lora_rows(slot_ids: int | Sequence[int] | Tensor | None) -> None:
    """Set the row → slot mapping used by every :class:`LoRALinear` until the next call.

    Args:
        slot_ids: ``None`` (no adapter anywhere), one slot for every row (an int), or one slot per
            row (a sequence or an int tensor ``[N]``). Host-side ids are summarised on the host
            (all-equal becomes uniform); a device tensor is used as given, without a sync.
    """
    global _ROWS
    if slot_ids is None:
        _ROWS = None
        return
    if isinstance(slot_ids, int):
        ids_list = [slot_ids]
    elif isinstance(slot_ids, Tensor) and slot_ids.device.type != "cpu":
        _ROWS = LoRARows(None, slot_ids.reshape(-1).long())
        return
    else:
        ids_list = [int(s) for s in (slot_ids.reshape(-1).tolist() if isinstance(slot_ids, Tensor) else slot_ids)]
    if not ids_list or min(ids_list) < 0:
        raise ValueError(f"slot ids must be a non-empty list of non-negative slots, got {ids_list!r}")
    if isinstance(slot_ids, int) or len(set(ids_list)) == 1:
        _ROWS = LoRARows(ids_list[0], None)
    else:
        _ROWS = LoRARows(None, torch.tensor(ids_list, dtype=torch.int64))


def get_lora_rows() -> LoRARows | None:
    """The current mapping (None: no adapter)."""
    return _ROWS


@contextmanager
def lora_rows(slot_ids: int | Sequence[int] | Tensor | None) -> Iterator[None]:
    """:func:`set_lora_rows` for a block, restoring the previous mapping afterwards."""
    global _ROWS
    previous = _ROWS
    set_lora_rows(slot_ids)
    try:
        yield
    finally:
        _ROWS = previous


# --------------------------------------------------------------------------------- LoRA modules


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` (same ``weight``/``bias`` parameters, same state-dict keys) plus adapter slots.

    Buffers (non-persistent, model dtype/device): ``lora_a [S, r_max, in]``, ``lora_b [S, out, r_max]``,
    ``lora_scaling [S]``; slot 0 stays zero. Ranks below ``r_max`` are zero-padded. Output per row
    with slot ``s``: ``base(x) + (B_s (A_s x)) * scaling_s``, the reference's op order (spec §9).
    """

    def __init__(self, base: nn.Linear, num_slots: int, max_rank: int) -> None:
        nn.Module.__init__(self)  # not nn.Linear.__init__: share the base parameters, allocate nothing new
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        kw = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.register_buffer("lora_a", torch.zeros(num_slots, max_rank, self.in_features, **kw), persistent=False)
        self.register_buffer("lora_b", torch.zeros(num_slots, self.out_features, max_rank, **kw), persistent=False)
        self.register_buffer("lora_scaling", torch.zeros(num_slots, **kw), persistent=False)
        self.register_buffer("lora_b_cat", torch.zeros(self.out_features, num_slots * max_rank, **kw), persistent=False)
        self.slot_ranks = [0] * num_slots  # host copy: 0 = nothing loaded for this layer in that slot
        self.kernels = False  # AdapterSlots.use_kernels: mixed rows through voxcpm_engine.kernels.lora
        # Per-slot (A [r, in], B [out, r], scaling) views: slicing on every call costs more host time
        # than the LoRA kernels themselves in eager mode.
        self._views: list[tuple[Tensor, Tensor, Tensor] | None] = [None] * num_slots

    def _refresh_views(self) -> None:
        self._views = [
            (self.lora_a[s, :r], self.lora_b[s, :, :r], self.lora_scaling[s]) if r else None
            for s, r in enumerate(self.slot_ranks)
        ]

    def _apply(self, fn: Any, recurse: bool = True) -> LoRALinear:
        # .to()/.cuda() replace the buffers, so views into the old ones must be rebuilt.
        super()._apply(fn, recurse)
        self._refresh_views()
        return self

    @torch.no_grad()
    def load_slot(self, slot: int, a: Tensor, b: Tensor, scaling: float) -> None:
        """Copy one adapter's ``A [r, in]``, ``B [out, r]`` into ``slot`` (cast to the buffer dtype)."""
        r = a.size(0)
        self.lora_a[slot].zero_()
        self.lora_b[slot].zero_()
        self.lora_a[slot, :r].copy_(a)
        self.lora_b[slot, :, :r].copy_(b)
        # fp32 first, then the buffer dtype: the reference's fp32 scaling buffer cast with the model.
        self.lora_scaling[slot].copy_(torch.tensor(scaling, dtype=torch.float32))
        self._sync_b_cat(slot)
        self.slot_ranks[slot] = r
        self._refresh_views()

    @torch.no_grad()
    def clear_slot(self, slot: int) -> None:
        """Zero ``slot`` (this layer then contributes nothing for rows using it)."""
        self.lora_a[slot].zero_()
        self.lora_b[slot].zero_()
        self.lora_scaling[slot].zero_()
        self._sync_b_cat(slot)
        self.slot_ranks[slot] = 0
        self._refresh_views()

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.kernels and _ROWS is not None and _ROWS.uniform is None:
            add_adapters_([self], x, out)
            return out
        delta = self.delta(x)
        return out if delta is None else out + delta.view(out.shape)

    def delta(self, x: Tensor) -> Tensor | None:
        """The adapter term of the current rows (``None`` when no row has one); add it to the base output."""
        rows = _ROWS
        if rows is None:
            return None
        if rows.uniform is not None:
            views = self._views[rows.uniform]
            if views is None:  # slot 0, or an adapter that does not target this layer
                return None
            a, b, scaling = views
            # The reference formula on the slot's own rank: bit-exact with its LoRALinear.
            return F.linear(F.linear(x, a), b) * scaling
        ids = rows.ids_on(x.device)
        n = ids.numel()
        if x.dim() < 2 or x.size(0) != n:
            raise ValueError(f"LoRA rows: {n} slot ids for an input of shape {tuple(x.shape)} (rows = dim 0)")
        # Mixed slots without gathering per-row weights: project onto every slot's A at once, keep
        # each row's own slot (one-hot), one GEMM with every slot's B side by side, then the row's
        # scaling (after B, in the reference's order).
        slots, rank = self.lora_a.shape[0], self.lora_a.shape[1]
        x3 = x.reshape(n, -1, self.in_features)
        h = F.linear(x3, self.lora_a.view(slots * rank, self.in_features)).view(n, -1, slots, rank)
        h = (h * rows.one_hot_on(x.device, slots, h.dtype).view(n, 1, slots, 1)).view(n, -1, slots * rank)
        return F.linear(h, self.lora_b_cat) * self.lora_scaling.index_select(0, ids).view(n, 1, 1)

    def _sync_b_cat(self, slot: int) -> None:
        # lora_b_cat [out, slots * r] holds every slot's B side by side for the mixed-slot path.
        self.lora_b_cat.view(self.out_features, -1, self.lora_b.shape[2])[:, slot].copy_(self.lora_b[slot])


def add_adapters_(layers: Sequence[nn.Module], x: Tensor, out: Tensor) -> Tensor:
    """Add the current rows' LoRA terms of ``layers`` (all reading ``x``) to their outputs side by side in ``out``.

    ``out`` holds the layers' base outputs concatenated on the last dim (one fused GEMM, e.g. q/k/v),
    and is updated in place. Layers without LoRA add nothing. With :meth:`AdapterSlots.use_kernels`
    and per-row slots, the group takes two segmented kernels (:mod:`voxcpm_engine.kernels.lora`);
    otherwise each layer's :meth:`LoRALinear.delta` is added to its slice.

    Returns:
        ``out``.
    """
    rows = _ROWS
    if rows is None:
        return out
    lora = [m for m in layers if isinstance(m, LoRALinear)]
    if rows.uniform is None and lora and len(lora) == len(layers) and lora[0].kernels:
        from voxcpm_engine.kernels.lora import add_lora_

        order, ordered = rows.sorted_on(x.device)
        add_lora_(
            x, out, [m.lora_a for m in lora], [m.lora_b for m in lora], [m.lora_scaling for m in lora], order, ordered
        )
        return out
    start = 0
    for layer in layers:
        width = layer.out_features
        delta = layer.delta(x) if isinstance(layer, LoRALinear) else None
        if delta is not None:
            part = out[..., start : start + width]
            part.copy_(part + delta.view(part.shape))
        start += width
    return out


def _plain_linear(module: nn.Linear) -> nn.Linear:
    linear = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(linear)  # skip reset_parameters (and its allocation): reuse the parameters
    linear.in_features, linear.out_features = module.in_features, module.out_features
    linear.weight, linear.bias = module.weight, module.bias
    return linear


class AdapterSlots:
    """Device side of LoRA: the :class:`LoRALinear` layers of one model and what each slot holds.

    Built by :func:`enable_lora`. Slot 0 is "no adapter" and is never written.
    """

    def __init__(self, model: nn.Module, layers: Mapping[str, LoRALinear], num_slots: int, max_rank: int) -> None:
        self.model = model
        self.layers = dict(layers)
        self.num_slots = num_slots
        self.max_rank = max_rank

    @property
    def targets(self) -> frozenset[str]:
        """Names of the LoRA-enabled layers."""
        return frozenset(self.layers)

    def check(self, adapter: Adapter) -> None:
        """Raise :class:`AdapterError` unless ``adapter`` fits these layers (rank, targets, shapes)."""
        where = str(adapter.path or "adapter")
        if adapter.rank > self.max_rank:
            raise AdapterError(f"{where}: rank {adapter.rank} exceeds the engine's max LoRA rank {self.max_rank}")
        outside = sorted(adapter.targets - self.targets)
        if outside:
            raise AdapterError(f"{where}: targets layers without LoRA enabled in the engine: {listing(outside)}")
        for name, (a, b) in adapter.weights.items():
            layer = self.layers[name]
            if a.size(1) != layer.in_features or b.size(0) != layer.out_features:
                raise AdapterError(f"{where}: {name} shapes do not match the model (architecture mismatch?)")

    def load(self, slot: int, adapter: Adapter) -> None:
        """Make ``slot`` hold ``adapter``: its layers get its tensors, every other layer is zeroed."""
        self._check_slot(slot)
        self.check(adapter)
        for name, layer in self.layers.items():
            if name in adapter.weights:
                layer.load_slot(slot, *adapter.weights[name], adapter.scaling)
            else:
                layer.clear_slot(slot)

    def use_kernels(self) -> None:
        """Route mixed-slot rows through the segmented Triton kernels (CUDA, or ``TRITON_INTERPRET=1``)."""
        for layer in self.layers.values():
            layer.kernels = True

    def clear(self, slot: int) -> None:
        """Zero ``slot`` in every layer."""
        self._check_slot(slot)
        for layer in self.layers.values():
            layer.clear_slot(slot)

    def _check_slot(self, slot: int) -> None:
        if not 1 <= slot < self.num_slots:
            raise ValueError(f"slot must be in [1, {self.num_slots}), got {slot}")


def enable_lora(
    model: nn.Module, num_slots: int, max_rank: int, targets: Sequence[str] | Mapping[str, Any] | None = None
) -> AdapterSlots:
    """Swap the target ``nn.Linear`` layers of ``model`` for :class:`LoRALinear` with ``num_slots`` slots.

    Args:
        model: A :class:`voxcpm_engine.model.voxcpm.VoxCPMModel` (or any module when ``targets`` is given).
        num_slots: Slots including slot 0 ("no adapter"); at least 2.
        max_rank: Largest adapter rank the slots hold.
        targets: Layer names; default :func:`default_lora_targets` of ``model.config``.

    Returns:
        The :class:`AdapterSlots` handle for loading adapters.
    """
    if num_slots < 2 or max_rank < 1:
        raise ValueError(f"need num_slots >= 2 and max_rank >= 1, got {num_slots}, {max_rank}")
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise RuntimeError("LoRA is already enabled on this model (disable_lora first)")
    names = list(default_lora_targets(model.config) if targets is None else targets)
    modules = dict(model.named_modules())
    wrong = [n for n in names if not isinstance(modules.get(n), nn.Linear)]
    if wrong:
        raise ValueError(f"not nn.Linear layers of the model: {listing(wrong)}")
    layers = {}
    # Buffers must be normal tensors even if the caller is in inference mode: slots are rewritten later.
    with torch.inference_mode(False), torch.no_grad():
        for name in names:
            parent_name, _, leaf = name.rpartition(".")
            layers[name] = LoRALinear(modules[name], num_slots, max_rank)
            setattr(model.get_submodule(parent_name), leaf, layers[name])
    return AdapterSlots(model, layers, num_slots, max_rank)


def disable_lora(model: nn.Module) -> None:
    """Put plain ``nn.Linear`` layers (same parameters) back in place of every :class:`LoRALinear`."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent_name, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent_name), leaf, _plain_linear(module))


@contextmanager
def apply_single_adapter(model: nn.Module, adapter: Adapter) -> Iterator[AdapterSlots]:
    """Run ``model`` with one adapter on every row (single-request generation, e.g. ``Synthesizer``).

    Enables LoRA on the adapter's layers with 2 slots, loads it into slot 1, routes every row there
    for the block, then restores plain layers and the previous row mapping.
    """
    slots = enable_lora(model, num_slots=2, max_rank=adapter.rank, targets=sorted(adapter.targets))
    try:
        slots.load(1, adapter)
        with lora_rows(1):
            yield slots
    finally:
        disable_lora(model)
