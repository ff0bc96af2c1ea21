"""Many processes for ``xviz explain`` and ``xviz evaluate``: ``torchrun --nproc_per_node N -m xviz explain ...``.

The process group is the training's (:mod:`xviz.train.distributed`: torchrun's ``RANK`` /
``WORLD_SIZE``, NCCL on CUDA, gloo on the CPU). The inputs are split into contiguous blocks, one per
rank (:func:`block`): each input on exactly one rank, the ranks' blocks in rank order are the inputs
in order. Each rank explains and writes its own block; what is printed or gathered into one file
(the table, the report's records, the grids, the evaluation's sums and counts) is collected by
:func:`gather` in rank order, so it reads exactly as a single process would have written it.
"""

from __future__ import annotations

import contextlib
import os

import torch.distributed as dist

from xviz.errors import XvizError
from xviz.train.distributed import World, all_sum, setup, teardown

__all__ = ["Group", "World", "block", "current", "gather", "joined"]


def current() -> World:
    """The process group the caller is in (e.g. a script that called ``init_process_group``), else one process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return World(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size())
    return World()


def block(count: int, world: World, unit: int = 1) -> range:
    """Rank ``world.rank``'s share of ``count`` items, in whole units of ``unit`` items (a batch): the
    units ``[r * U // size, (r + 1) * U // size)`` of ``U = ceil(count / unit)``, as item indices."""
    units = -(-count // unit)
    first, last = world.rank * units // world.size, (world.rank + 1) * units // world.size
    return range(min(first * unit, count), min(last * unit, count))


class Group(World):
    """A command's world (see :func:`joined`): its ranks meet once more, in :func:`gather`; a mistake
    met before that by any rank is agreed on there, so no rank waits for one that stopped."""

    def __init__(self, world: World, device: str):
        super().__init__(world.rank, world.local_rank, world.size, world.owns_group)
        object.__setattr__(self, "device", device)
        object.__setattr__(self, "pending", True)  # the ranks have yet to meet in gather()

    def agree(self, error: Exception | None) -> None:
        """All ranks say whether they met a mistake (one all-reduce); if any did, every rank stops: the
        mistake is said by rank 0, or by the ranks that met it when rank 0 did not; the others leave with
        exit status 2 without a word."""
        object.__setattr__(self, "pending", False)
        failed, main_failed = all_sum(self, [error is not None, error is not None and self.main], self.device)
        if not failed:
            return
        teardown(self)
        if error is not None and (self.main or not main_failed):
            raise error
        raise SystemExit(2)


def gather(world: World, value) -> list:
    """Every rank's ``value`` (any picklable object), in rank order, on every rank; ``[value]`` alone.
    In a command's :class:`Group` the ranks first agree that none met a mistake."""
    if not world.distributed:
        return [value]
    if isinstance(world, Group) and world.pending:
        world.agree(None)
    values = [None] * world.size
    dist.all_gather_object(values, value)
    return values


@contextlib.contextmanager
def joined(device_type: str):
    """The command's world (a :class:`Group`): joined when torchrun started the process (else one process),
    left at the end. An XvizError met by a rank before the ranks meet in :func:`gather` stops every rank
    and is said once; one met after (rank 0 writing what it gathered) is that rank's own."""
    world = Group(setup(device_type), "cuda" if device_type == "cuda" else "cpu")
    try:
        yield world
    except XvizError as exc:
        if world.distributed and world.pending:
            world.agree(exc)
        if world.distributed and not world.main:  # after the meeting every rank computes the same: rank 0 says it
            raise SystemExit(2) from None
        raise
    finally:
        teardown(world)


def merge_writers(world: World, writer, records: list[dict], skipped: int) -> tuple[list[dict], int]:
    """``xviz explain``'s per-rank outputs as one: on rank 0 ``writer`` holds every rank's table rows,
    overlay count and grid images (in rank order, so in input order), and the report ``records`` of all
    ranks are returned; other ranks keep nothing to print or draw. Returns ``(records, skipped)``, the
    count of unreadable inputs summed over the ranks."""
    parts = gather(world, (writer.rows, writer.overlays, writer._gallery, records, skipped))
    if not world.main:
        writer.rows, writer._gallery = [], {}
        return [], sum(p[4] for p in parts)
    writer.rows = [row for p in parts for row in p[0]]
    writer.overlays = sum(p[1] for p in parts)
    gallery: dict = {}
    for _, _, part, _, _ in parts:
        for method, (views, heats, titles, signed) in part.items():
            merged = gallery.setdefault(method, ([], [], [], signed))
            for into, more in zip(merged, (views, heats, titles)):
                into.extend(more)
    writer._gallery = gallery
    return [r for p in parts for r in p[3]], sum(p[4] for p in parts)
