"""KV block accounting with prefix caching keyed on content (nano-vllm / vLLM style).

Both causal LMs (base and residual) index their caches with the same block table, since they see
the same positions. A full block of prompt positions is identified by a hash chained over the
previous block's hash and its own content (token ids, masks and latent patch bytes), so two
requests whose prompts start the same way (e.g. one VoxCPM2 reference voice, which leads the
sequence) share the blocks, and the second computes only what follows. Freed blocks keep their
hash until reused, so a later request with the same voice can still hit them.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass

import torch

from voxcpm_engine.sched.request import Request


@dataclass
class Block:
    """One KV block: ``ref_count`` tables point at it; ``hash`` is set once it holds a full cached prefix."""

    block_id: int
    ref_count: int = 0
    hash: bytes | None = None


def prompt_block_hashes(request: Request, block_size: int) -> list[bytes]:
    """Chained content hashes of the request's full prompt blocks (computed once per request)."""
    if request.prompt_hashes is not None:
        return request.prompt_hashes
    pf = request.prefill
    hashes: list[bytes] = []
    prev = request.cache_salt  # the adapter changes every layer's K/V, so it is part of the key
    ids, patches, mask = pf.text_ids, pf.patches, pf.audio_mask
    for start in range(0, len(pf) - block_size + 1, block_size):
        end = start + block_size
        h = hashlib.blake2b(prev, digest_size=16)
        h.update(ids[start:end].numpy().tobytes())
        h.update(mask[start:end].numpy().tobytes())
        h.update(patches[start:end].contiguous().view(torch.uint8).numpy().tobytes())
        prev = h.digest()
        hashes.append(prev)
    request.prompt_hashes = hashes
    return hashes


class BlockManager:
    """Allocates KV blocks to requests; the single owner of block reference counts.

    Args:
        num_blocks: Blocks per LM stack.
        block_size: Positions per block.
        enable_prefix_caching: Share full prompt blocks with equal content.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.block_size = block_size
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_ids: deque[int] = deque(range(num_blocks))
        self.cached: dict[bytes, int] = {}  # content hash -> block id
        self.enable_prefix_caching = enable_prefix_caching

    @property
    def num_blocks(self) -> int:
        """Total blocks."""
        return len(self.blocks)

    @property
    def num_free(self) -> int:
        """Blocks no request holds (cached content may still live there)."""
        return len(self.free_ids)

    def _take(self, block_id: int | None = None) -> int:
        if block_id is None:
            block_id = self.free_ids.popleft()
        else:
            self.free_ids.remove(block_id)
        block = self.blocks[block_id]
        if block.hash is not None and self.cached.get(block.hash) == block_id:
            del self.cached[block.hash]  # its content is about to be overwritten
        block.hash = None
        block.ref_count = 1
        return block_id

    def _cache_hits(self, request: Request) -> list[int]:
        """Leading cached blocks of the request's prompt (never the block holding its last position)."""
        if not self.enable_prefix_caching:
            return []
        hits = []
        # The last prompt position must be computed to get the states that condition the first patch.
        usable = (request.prompt_len - 1) // self.block_size
        for digest in prompt_block_hashes(request, self.block_size)[:usable]:
            block_id = self.cached.get(digest)
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    def can_allocate(self, request: Request, positions: int) -> bool:
        """Whether ``positions`` positions of a new request fit now (cache hits counted)."""
        hits = self._cache_hits(request)
        needed = -(-positions // self.block_size) - len(hits)
        reusable_free = sum(1 for b in hits if self.blocks[b].ref_count == 0)
        return needed <= self.num_free - reusable_free

    def allocate(self, request: Request, positions: int) -> None:
        """Give a new (or preempted) request blocks for its first ``positions`` positions.

        Sets ``block_table``, ``num_cached`` and ``num_computed`` (cached positions need no compute).
        """
        assert not request.block_table, "request already holds blocks"
        hits = self._cache_hits(request)
        for block_id in hits:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                self.free_ids.remove(block_id)
            block.ref_count += 1
        request.block_table = list(hits)
        request.num_cached = request.num_computed = len(hits) * self.block_size
        self.grow(request, positions)

    def grow(self, request: Request, positions: int) -> bool:
        """Make the request's table cover ``positions`` positions; False (nothing taken) if blocks run out."""
        needed = -(-positions // self.block_size) - len(request.block_table)
        if needed > self.num_free:
            return False
        for _ in range(max(needed, 0)):
            request.block_table.append(self._take())
        return True

    def commit_prompt_blocks(self, request: Request) -> None:
        """Publish the request's computed full prompt blocks in the prefix cache."""
        if not self.enable_prefix_caching:
            return
        full = min(request.num_computed, request.prompt_len) // self.block_size
        for index, digest in enumerate(prompt_block_hashes(request, self.block_size)[:full]):
            block = self.blocks[request.block_table[index]]
            if block.hash is None and digest not in self.cached:
                block.hash = digest
                self.cached[digest] = block.block_id

    def free(self, request: Request) -> None:
        """Return the request's blocks; cached content stays findable until a block is reused."""
        for block_id in reversed(request.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                # Cached blocks go to the back so fresh allocations reuse uncached ones first.
                if block.hash is None:
                    self.free_ids.appendleft(block_id)
                else:
                    self.free_ids.append(block_id)
        request.block_table = []

    def check(self, holders: list[Request]) -> None:
        """Assert the accounting invariant: every block is free xor referenced by exactly its holders."""
        refs = [0] * self.num_blocks
        for request in holders:
            for block_id in request.block_table:
                refs[block_id] += 1
        free = set(self.free_ids)
        assert len(free) == len(self.free_ids), "a block is on the free list twice"
        for block in self.blocks:
            assert block.ref_count == refs[block.block_id], f"block {block.block_id}: ref_count mismatch"
            assert (block.ref_count == 0) == (block.block_id in free), f"block {block.block_id}: free-list mismatch"
        for digest, block_id in self.cached.items():
            assert self.blocks[block_id].hash == digest, "prefix cache points at a reused block"
