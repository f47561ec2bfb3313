"""ModelRunner: one batched step of the model for whatever the scheduler picked.

A step feeds every scheduled row its pending positions (a prompt chunk, positions re-fed after a
preemption, or the newest patch) through both LMs in one packed forward pass over the paged
caches. Rows that have caught up then sample their next patch together: one batched DiT sampler
call (noise from each row's own generator), one local-encoder call for the new patches, one stop
decision. Nothing here loops over rows on the device side; the per-row Python work is building
the index tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.profiler import record_function

from voxcpm_engine.config.model_config import ModelConfig
from voxcpm_engine.lora.layers import set_lora_rows
from voxcpm_engine.model.sampler import NoiseStream
from voxcpm_engine.model.voxcpm import VoxCPMModel
from voxcpm_engine.sched.request import Request
from voxcpm_engine.sched.scheduler import ScheduledRow
from voxcpm_engine.worker.decode_graphs import DecodeGraphs, DecodeOutputs
from voxcpm_engine.worker.packed_lm_graphs import PackedLMGraphs
from voxcpm_engine.worker.paged_kv import BatchLayout, PagedAttention, PagedKVCache


@dataclass
class SampledBatch:
    """The new patches of the rows that sampled in a step, in row order.

    Attributes:
        requests: The rows' requests.
        patches: ``[B, P, D]`` new patches (model dtype, model device).
        stops: ``[B]`` stop-head decisions on the host; after a graphed step still being copied
            there while later work is queued behind it: read them with :meth:`stop_list`.
        ready: Marks the end of that copy (None when the values are already there).
    """

    requests: list[Request]
    patches: Tensor
    stops: Tensor
    ready: torch.cuda.Event | None = None

    def __len__(self) -> int:
        return len(self.requests)

    def select(self, rows: list[int]) -> SampledBatch:
        """The batch restricted to ``rows`` (indices, in order)."""
        stops = torch.tensor(self.stop_list())[rows]  # waits for the flags' copy to the host
        index = torch.tensor(rows, device=self.patches.device)
        return SampledBatch([self.requests[i] for i in rows], self.patches[index], stops)

    def stop_list(self) -> list[bool]:
        """The stop decisions (waits for their copy to the host if it is still under way)."""
        if self.ready is not None:
            self.ready.synchronize()
        return self.stops.tolist()


class ModelRunner:
    """Owns the paged KV caches of both LMs and runs batched steps of a :class:`VoxCPMModel`.

    Args:
        model: The loaded model (eval).
        num_blocks: KV blocks per LM stack.
        block_size: Positions per block.
        attention_backend: Force a kernel backend (``None``: best available for the device).
        lora_enabled: The model's LoRA layers are installed (:func:`voxcpm_engine.lora.layers.enable_lora`); rows
            are then routed to their request's ``lora_slot``.
    """

    def __init__(
        self,
        model: VoxCPMModel,
        num_blocks: int,
        block_size: int,
        attention_backend: str | None = None,
        lora_enabled: bool = False,
    ) -> None:
        self.model = model
        self.cfg: ModelConfig = model.config
        self.block_size = block_size
        self.backend = attention_backend
        self.lora_enabled = lora_enabled
        kw = dict(dtype=model.dtype, device=model.device)
        self.base_cache = PagedKVCache(self.cfg.base_lm_config(), num_blocks, block_size, **kw)
        self.residual_cache = PagedKVCache(self.cfg.residual_lm_config(), num_blocks, block_size, **kw)
        self.graphs: DecodeGraphs | None = None  # set by the engine on CUDA (worker.decode_graphs)
        self.lm_graphs: PackedLMGraphs | None = None  # set by the engine on CUDA (worker.packed_lm_graphs)
        self.lm_graph_steps = 0  # non-decode steps whose LMs ran as a packed-LM graph
        self.graph_steps = 0  # steps served by the static decode path
        self.graph_samples = 0  # other steps whose sampling ran on the static sampler path

    def _inputs(self, rows: list[ScheduledRow]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Packed LM inputs: ``x [N, H]``, ``audio_embed [N, H]``, ``text_mask``, ``audio_mask`` (``[N, 1]``)."""
        model, device, dtype = self.model, self.model.device, self.model.dtype
        ids, text_mask, patches, given = [], [], [], []
        offset = 0
        for row in rows:
            req, pf = row.request, row.request.prefill
            end, prompt_end = row.start + row.count, min(row.start + row.count, req.prompt_len)
            if row.start < prompt_end:  # prompt positions
                ids.append(pf.text_ids[row.start : prompt_end])
                text_mask.append(pf.text_mask[row.start : prompt_end])
                patches.append(pf.patches[row.start : prompt_end].to(device))
            first_gen = max(row.start, req.prompt_len)
            if first_gen < end:  # generated patches, fed back as audio positions
                n_gen = end - first_gen
                ids.append(torch.zeros(n_gen, dtype=torch.long))
                text_mask.append(torch.zeros(n_gen, dtype=torch.int32))
                patches.append(torch.stack(req.patches[first_gen - req.prompt_len : end - req.prompt_len]))
                if end == req.num_positions and req.embed is not None:
                    given.append((offset + row.count - 1, req.embed))  # encoded when it was sampled
            offset += row.count
        tm_host = torch.cat(text_mask)  # the masks are built on the host: no device sync to inspect them
        tm = tm_host.to(device).view(-1, 1)
        am = 1 - tm
        patches_t = torch.cat(patches).to(dtype)
        embed = torch.zeros(offset, model.config.base_lm_config().hidden_size, dtype=dtype, device=device)
        encode = tm_host == 0
        for i, _ in given:
            encode[i] = False
        if bool(encode.any()):
            slots = [r.request.lora_slot for r in rows for _ in range(r.count)]
            self._lora_rows([slot for slot, keep in zip(slots, encode.tolist(), strict=True) if keep])
            idx = encode.nonzero().flatten().to(device)
            embed[idx] = model.encode_patches(patches_t[idx][:, None])[:, 0]
            self._lora_rows(None)
        for i, e in given:
            embed[i] = e
        text_embed = model.embed_text(torch.cat(ids).to(device))
        return tm * text_embed + am * embed, embed, tm, am

    @torch.inference_mode()
    def step(self, rows: list[ScheduledRow]) -> SampledBatch | None:
        """Run one step; updates each row's LM states and returns the new patches (None if no row sampled).

        Nothing here waits for the GPU: the stop decisions of a graphed step reach the host
        while the caller queues the VAE decode behind it.
        """
        if self.graphs is not None and self.graphs.accepts(rows):
            with record_function("runner.decode_graph"):
                out = self.graphs.run(rows)
            self.graph_steps += 1
            return self._batch([row.request for row in rows], out)
        with record_function("runner.lm"):
            ready = self._lm(rows)
        with record_function("runner.sampler"):
            return self._sample([r.request for _, r in ready])

    @staticmethod
    def _batch(requests: list[Request], out: DecodeOutputs) -> SampledBatch:
        for j, req in enumerate(requests):
            req.embed = out.embeds[j]
        return SampledBatch(requests, out.patches, out.stops, out.ready)

    def _lm(self, rows: list[ScheduledRow]) -> list[tuple[int, ScheduledRow]]:
        """Both LMs over the rows' new positions; returns the rows that sample, with their last packed index."""
        x, audio_embed, tm, am = self._inputs(rows)
        if self.lm_graphs is not None and self.lm_graphs.accepts(rows):
            hidden, residual = self.lm_graphs.run(rows, x, audio_embed, tm, am)
            # The graph's static outputs are overwritten by its next replay: the rows keep a copy
            # (one device copy each, queued like the rest: no index upload, no wait for the GPU).
            hidden, residual = hidden.clone(), residual.clone()
            self.lm_graph_steps += 1
        else:
            hidden, residual = self._lm_eager(rows, x, audio_embed, tm, am)
        ready, end = [], 0
        for row in rows:
            end += row.count
            if row.sample:
                ready.append((end - 1, row))
        for last, row in ready:
            row.request.lm_hidden = hidden[last]
            row.request.residual_hidden = residual[last]
        return ready

    def _lm_eager(
        self, rows: list[ScheduledRow], x: Tensor, audio_embed: Tensor, tm: Tensor, am: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Both LMs over the packed positions, op by op (any rows, LoRA voices included)."""
        model = self.model
        layout = BatchLayout.build(
            [(r.start, r.count, r.request.block_table) for r in rows], self.block_size, model.device
        )
        # Packed tokens go in as [N, 1, H]: each token is a "row" of its own, so per-request LoRA
        # slots can be set per token, and the attention kernels see them in packed order.
        positions = layout.positions.view(-1, 1)
        self._lora_rows([r.request.lora_slot for r in rows for _ in range(r.count)])
        hidden = model.base_lm(x[:, None], positions, PagedAttention(self.base_cache, layout, self.backend))[:, 0]
        hidden = model.quantize(hidden) * am + hidden * tm
        residual_in = model.residual_input(hidden, am * audio_embed)
        residual = model.residual_lm(
            residual_in[:, None], positions, PagedAttention(self.residual_cache, layout, self.backend)
        )[:, 0]
        self._lora_rows(None)
        return hidden, residual

    def _lora_rows(self, slots: list[int] | None) -> None:
        """Route each row of the next forward to its request's adapter slot (no-op without adapters)."""
        if self.lora_enabled:
            set_lora_rows(None if slots is None or not any(slots) else slots)

    def noise(self, requests: list[Request], out: Tensor | None = None) -> Tensor:
        """``[B, D, P]`` starting noise of the sampler: each request's next step from its own stream (into ``out``)."""
        cfg, model = self.cfg, self.model
        steps = []
        for r in requests:
            if r.noise is None:
                r.noise = NoiseStream(
                    r.generator,
                    (cfg.feat_dim, cfg.patch_size),
                    dtype=model.dtype,
                    device=model.device,
                    temperature=r.params.temperature,
                )
            steps.append(r.noise.next())
        return torch.stack(steps, out=out)

    def cond_patch(self, req: Request) -> Tensor:
        """The patch that conditions the next one: the newest patch, else the prompt's last position."""
        if req.patches:
            return req.patches[-1]
        return req.prefill.patches[-1].to(self.model.device, self.model.dtype)

    def _sample(self, requests: list[Request]) -> SampledBatch | None:
        if not requests:
            return None
        if self.graphs is not None and self.graphs.accepts_sampling(requests):
            out = self.graphs.sample(requests)
            self.graph_samples += 1
            return self._batch(requests, out)
        model = self.model
        order: list[Request] = []
        patches, stops = [], []
        # Rows with different step counts cannot share an Euler schedule; usually there is one group.
        for steps in sorted({r.params.inference_timesteps for r in requests}):
            group = [r for r in requests if r.params.inference_timesteps == steps]
            lm_hidden = torch.stack([r.lm_hidden for r in group])
            residual_hidden = torch.stack([r.residual_hidden for r in group])
            noise = self.noise(group)
            cond = torch.stack([self.cond_patch(r) for r in group]).transpose(1, 2).contiguous()
            cfg_value = torch.tensor([r.params.cfg_value for r in group], dtype=torch.float32, device=model.device)
            slots = [r.lora_slot for r in group]
            self._lora_rows(slots)
            mu = model.dit_condition(lm_hidden, residual_hidden)
            self._lora_rows(slots + slots)  # the DiT's CFG batch is [cond rows | uncond rows]
            sample = model.sample_patch(noise, mu, cond, n_timesteps=steps, cfg_value=cfg_value)
            self._lora_rows(slots)
            group_patches = sample.transpose(1, 2)  # the local encoder must see this layout (spec §4.6)
            embeds = model.encode_patches(group_patches.unsqueeze(1))[:, 0]
            self._lora_rows(None)
            stops.append(model.stop_logits(lm_hidden).argmax(dim=-1) == 1)
            for j, req in enumerate(group):
                req.embed = embeds[j]
            order += group
            patches.append(group_patches.contiguous())
        return SampledBatch(order, torch.cat(patches), torch.cat(stops).cpu())
