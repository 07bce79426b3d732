"""Process layout under torchrun: tensor-parallel groups, data-parallel work sharing, claiming.

World = tp x dp. The ranks of one tensor-parallel group are consecutive, so with `tp` dividing the
processes per node a group never spans nodes. Each group's first rank is its *leader*: it claims
work units and writes them; the other ranks of the group follow its broadcasts. Units are claimed
through torchrun's own key-value store (`store.add` on one counter hands out disjoint indices), so
a slow group never stalls the others: it just claims fewer units.

The groups come from one `init_device_mesh` (dims `dp`, `tp`), as torchtitan builds them.
Everything here also runs without torchrun (world size 1, no process group).
"""

from __future__ import annotations

import datetime
import itertools
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import TypeVar

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.distributed_c10d import Store

from tdsdist.errors import TdsError

T = TypeVar("T")
CLAIM_KEY = "tdsdist/next_unit"
DONE_KEY = "tdsdist/done_positions"
#: Claim loops begun in this process. Every rank begins the same loops in the same order
#: (`generate --base`: the decoding's, then the scoring's), so the n-th loop's keys are the same
#: on every rank and no loop starts from the counters another one left in the store.
_claim_loops = itertools.count()


@dataclass(frozen=True)
class ParallelDims:
    """The parallel layout; checked before anything loads."""

    world: int
    local_world: int
    tp: int

    def __post_init__(self) -> None:
        if self.tp < 1:
            raise TdsError(f"--tp must be at least 1, got {self.tp}")
        if self.local_world % self.tp:
            raise TdsError(
                f"--tp {self.tp} does not divide the {self.local_world} processes per node"
                " (a tensor-parallel group must live on one node)"
            )
        if self.world % self.tp:
            raise TdsError(f"--tp {self.tp} does not divide the world size {self.world}")

    @property
    def dp(self) -> int:
        return self.world // self.tp


@dataclass(frozen=True)
class Dist:
    """This process's place in the layout."""

    rank: int
    dims: ParallelDims
    local_rank: int
    tp_group: dist.ProcessGroup | None
    store: Store | None = None
    """The job's key-value store (torchrun's), where units are claimed; None on one process."""

    @property
    def tp_rank(self) -> int:
        return self.rank % self.dims.tp

    @property
    def dp_rank(self) -> int:
        return self.rank // self.dims.tp

    @property
    def leader(self) -> int:
        """Global rank of this process's group leader."""
        return self.rank - self.tp_rank

    @property
    def is_leader(self) -> bool:
        return self.tp_rank == 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.dims.world > 1


def init_distributed(tp: int, timeout_s: int, device: torch.device) -> Dist:
    """Join torchrun's process group (if launched by it) and build the tensor-parallel groups.

    Without torchrun this is a world of one and no process group. The timeout bounds every
    collective, so a dead peer ends the job instead of hanging it.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dims = ParallelDims(
        world=world, local_world=int(os.environ.get("LOCAL_WORLD_SIZE", world)), tp=tp
    )
    if world == 1:
        return Dist(rank=0, dims=dims, local_rank=0, tp_group=None)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    timeout = datetime.timedelta(seconds=timeout_s)
    store = job_store(rank, world, timeout)
    dist.init_process_group(
        backend=backend, store=store, rank=rank, world_size=world, timeout=timeout
    )
    # Ranks [dp x tp], tp the inner dimension: a tensor-parallel group is consecutive ranks.
    mesh = init_device_mesh(device.type, (dims.dp, tp), mesh_dim_names=("dp", "tp"))
    tp_group = mesh["tp"].get_group() if tp > 1 else None
    return Dist(rank=rank, dims=dims, local_rank=local_rank, tp_group=tp_group, store=store)


def job_store(rank: int, world: int, timeout: datetime.timedelta) -> Store:
    """The key-value store at torchrun's MASTER_ADDR:MASTER_PORT, made here (public API) so that
    the claims can use it, as `init_process_group`'s env:// rendezvous would make it: under
    torchrun's agent (TORCHELASTIC_USE_AGENT_STORE) every rank is a client of the agent's store
    (a new one per restart); launched otherwise, rank 0 hosts it."""
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    try:
        host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    except (KeyError, ValueError):
        message = "WORLD_SIZE > 1 needs MASTER_ADDR and MASTER_PORT (launch with torchrun)"
        raise TdsError(message) from None
    # torch.distributed imports TCPStore without re-exporting it (strict mypy sees no attribute).
    return dist.TCPStore(  # type: ignore[attr-defined]
        host, port, world, is_master=rank == 0 and not agent, timeout=timeout, multi_tenant=True
    )


def destroy(d: Dist) -> None:
    if d.distributed and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_ints(
    values: list[int] | None, src: int, group: dist.ProcessGroup | None, d: Dist
) -> list[int]:
    """A list of ints from `src` to the group (length first); no pickling."""
    if not d.distributed:
        assert values is not None
        return values
    n = torch.tensor([len(values) if values is not None else 0], dtype=torch.long)
    dist.broadcast(n, src=src, group=group)
    data = torch.tensor(values if values is not None else [0] * int(n.item()), dtype=torch.long)
    if data.numel() == 0:
        return []
    dist.broadcast(data, src=src, group=group)
    return data.tolist()


def checked_on_main(d: Dist, run: Callable[[], T]) -> T | None:
    """`run()` on rank 0 (the checks that can fail on bad input); every rank learns whether it
    failed before doing anything else, so a bad file never leaves peers waiting on a collective.
    Returns what `run` returned on rank 0, None elsewhere."""
    result, error = None, ""
    if d.is_main:
        try:
            result = run()
        except TdsError as e:
            error = str(e)
    if d.distributed:
        failed = broadcast_ints([1 if error else 0] if d.is_main else None, 0, None, d)[0]
        if failed:
            if d.is_main:
                raise TdsError(error)
            raise SystemExit(2)
    elif error:
        raise TdsError(error)
    return result


def any_rank(d: Dist, flag: bool) -> bool:
    """Whether `flag` is true on any rank (every rank learns the same answer)."""
    if not d.distributed:
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.long)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


class WorkClaims:
    """Hands out indices into the list of pending units, one at a time, to group leaders."""

    def __init__(self, d: Dist, count: int) -> None:
        self.d = d
        self.count = count
        self.next_local = 0
        self.done_local = 0
        self.store = d.store if d.distributed else None
        loop = next(_claim_loops)
        self.claim_key, self.done_key = f"{CLAIM_KEY}/{loop}", f"{DONE_KEY}/{loop}"

    def claim(self) -> int:
        """The next unclaimed index, or -1 when all are taken."""
        if self.store is None:
            index, self.next_local = self.next_local, self.next_local + 1
        else:
            index = self.store.add(self.claim_key, 1) - 1
        return index if index < self.count else -1

    def add_done(self, positions: int) -> int:
        """Record finished positions; returns the job-wide total so far."""
        if self.store is None:
            self.done_local += positions
            return self.done_local
        return self.store.add(self.done_key, positions)


def claimed_indices(d: Dist, claims: WorkClaims, stop: StopFlag) -> Iterator[int]:
    """The indices this process's group works on, as its leader claims them, until none is left
    or SIGTERM asked the job to stop. The other ranks of a tensor-parallel group follow the
    leader's broadcast, so the whole group runs the same unit together. Both jobs loop on this."""
    while True:
        claimed: list[int] | None = None
        if d.is_leader:
            claimed = [-1 if stop.requested else claims.claim()]
        if d.dims.tp > 1:
            index = broadcast_ints(claimed, d.leader, d.tp_group, d)[0]
        else:
            assert claimed is not None  # one rank per group: every rank leads
            index = claimed[0]
        if index < 0:
            return
        yield index


class StopFlag:
    """SIGTERM (SLURM's preemption warning) asks the job to stop claiming work and exit cleanly."""

    def __init__(self) -> None:
        self.requested = False
        try:
            signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. inside some test runners)
            pass

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


def task_share(task_index: int | None, task_count: int | None) -> tuple[int, int]:
    """(index, count) of this array task: flags first, then SLURM's array variables, else (0, 1)."""
    env = os.environ
    if task_index is None and "SLURM_ARRAY_TASK_ID" in env:
        task_index = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
    if task_count is None and "SLURM_ARRAY_TASK_COUNT" in env:
        task_count = int(env["SLURM_ARRAY_TASK_COUNT"])
    task_index = 0 if task_index is None else task_index
    task_count = 1 if task_count is None else task_count
    if task_count < 1 or not 0 <= task_index < task_count:
        raise TdsError(f"--task-index {task_index} must lie in [0, --task-count {task_count})")
    return task_index, task_count
