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

from xviz.train.distributed import World, barrier, every_rank_alike, setup, teardown

__all__ = ["World", "barrier", "block", "current", "gather", "joined"]


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


def gather(world: World, value) -> list:
    """Every rank's ``value`` (any picklable object), in rank order, on every rank; ``[value]`` alone."""
    if not world.distributed:
        return [value]
    values = [None] * world.size
    dist.all_gather_object(values, value)
    return values


@contextlib.contextmanager
def joined(device_type: str):
    """The command's world: joined when torchrun started the process (else one process), left at the end;
    an XvizError met by any rank stops every rank and is said once (see
    :func:`xviz.train.distributed.every_rank_alike`)."""
    world = setup(device_type)
    try:
        with every_rank_alike(world, "cuda" if device_type == "cuda" else "cpu"):
            yield world
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
