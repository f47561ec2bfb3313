"""FIFO continuous-batching scheduler: decode rows first, then prompt chunks, within a token budget.

Every running request that has caught up gets its one decode position each step, so an arrival
never stalls running streams for more than one step: its prompt is fed in chunks that fit the
rest of ``max_num_batched_tokens``. Admission is strictly FIFO (the head of the queue blocks
those behind it). When KV blocks run out, the most recently admitted running request is
preempted: its blocks are freed, it keeps the patches it has made and goes back to the head of
the waiting queue, to be recomputed when blocks free up; FIFO order is kept and nothing is lost.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.lora.registry import AdapterRegistry, NoFreeSlotError
from voxcpm_engine.sched.block_manager import BlockManager
from voxcpm_engine.sched.request import Request, RequestStatus


@dataclass
class ScheduledRow:
    """One request's share of a step: ``count`` positions from ``start``; ``sample`` if it catches up."""

    request: Request
    start: int
    count: int

    @property
    def sample(self) -> bool:
        """Whether the row reaches its newest position this step and so samples a patch."""
        return self.start + self.count == self.request.num_positions


@dataclass
class SchedulerOutput:
    """What one step runs, who was preempted to make room, and who could not be admitted at all.

    Attributes:
        rows: Each scheduled request's share of the step.
        preempted: Running requests sent back to the head of the queue (their blocks freed).
        failed: Requests taken out of the queue because they can never run, with the reason (e.g.
            their LoRA voice was unregistered while they waited); the caller ends them.
    """

    rows: list[ScheduledRow] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    failed: list[tuple[Request, str]] = field(default_factory=list)


class Scheduler:
    """Owns the waiting queue, the running batch and the block manager.

    Args:
        config: Engine limits.
        block_manager: KV block accounting.
        adapters: Named LoRA voices (None: the engine serves no adapters).
    """

    def __init__(
        self, config: EngineConfig, block_manager: BlockManager, adapters: AdapterRegistry | None = None
    ) -> None:
        self.config = config
        self.blocks = block_manager
        self.adapters = adapters
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # admission order

    def add(self, request: Request) -> None:
        """Queue a request (FIFO); the caller has checked that it can ever fit."""
        request.status = RequestStatus.WAITING
        self.waiting.append(request)

    def has_work(self) -> bool:
        """Whether any request is waiting or running."""
        return bool(self.waiting or self.running)

    def _preempt_newest(self, out: SchedulerOutput) -> Request:
        victim = self.running.pop()
        out.rows = [r for r in out.rows if r.request is not victim]
        self.blocks.free(victim)
        victim.reset_for_recompute()
        victim.status = RequestStatus.WAITING
        self.waiting.appendleft(victim)
        out.preempted.append(victim)
        return victim

    def schedule(self) -> SchedulerOutput:
        """Pick this step's rows; may preempt to keep decode rows supplied with blocks."""
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        # Decode rows before prompt chunks: streams in flight never wait for an arrival's prefill.
        for request in sorted(self.running, key=lambda r: (r.num_pending > 1, r.arrival)):
            if request not in self.running:  # preempted earlier in this loop
                continue
            count = min(request.num_pending, budget)
            if count <= 0:
                continue
            while not self.blocks.grow(request, request.num_computed + count):
                if self._preempt_newest(out) is request:
                    break
            else:
                out.rows.append(ScheduledRow(request, request.num_computed, count))
                budget -= count
        budget = self.config.max_num_batched_tokens - sum(r.count for r in out.rows)
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            if request.lora_name is not None and not request.lora_slot:
                try:
                    request.lora_slot = self.adapters.acquire(request.lora_name)
                except NoFreeSlotError:
                    break  # every slot busy: wait, in order
                except KeyError as exc:  # unregistered while the request waited
                    self.waiting.popleft()
                    out.failed.append((request, str(exc)))
                    continue
                request.cache_salt = self.adapters.version_key(request.lora_slot).encode()
            if not self.blocks.can_allocate(request, request.num_positions):
                break  # strict FIFO: nobody overtakes the head of the queue
            self.waiting.popleft()
            self.blocks.allocate(request, request.num_positions)
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            count = min(request.num_pending, budget)
            out.rows.append(ScheduledRow(request, request.num_computed, count))
            budget -= count
        return out

    def finish(self, request: Request, status: RequestStatus) -> None:
        """Take a request out (finished, cancelled or failed) and free its blocks at once."""
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.blocks.free(request)
        if request.lora_slot:
            self.adapters.release(request.lora_slot)
            request.lora_slot = 0
        request.status = status
