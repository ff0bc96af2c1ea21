"""What an evaluation adds up over its batches, and the adding of the ranks' tallies when it runs
on several processes (``torchrun ... -m xviz evaluate``; :mod:`xviz.sharding`)."""

from __future__ import annotations

import torch


class Tally:
    """Sums over the batches, per method key: metric values (float64), curves (float64), image counts;
    and the examples kept for the sanity figure (the first ``show_examples`` picked, in batch order)."""

    def __init__(self, show_examples: int):
        self.sums: dict[str, dict[str, float]] = {}
        self.curves: dict[str, dict[str, torch.Tensor]] = {}
        self.counts: dict[str, int] = {}
        self.show_examples = show_examples
        self.examples: dict = {"images": [], "labels": [], "maps": {}, "signed": {}}

    def add(self, key: str, name: str, value) -> None:
        acc = self.sums.setdefault(key, {})
        acc[name] = acc.get(name, 0.0) + float(value)

    def add_curve(self, key: str, kind: str, curves: torch.Tensor) -> None:
        c = self.curves.setdefault(key, {})
        c[kind] = c.get(kind, 0) + curves.sum(0).double().cpu()

    def absorb(self, other: "Tally") -> None:
        """Add ``other``, the tally of the batches that follow this one's: sums, curves and counts added;
        its examples fill the places left (each batch picks its examples as a prefix of one order, so
        the result is what one tally over all the batches would hold)."""
        for key, acc in other.sums.items():
            for name, value in acc.items():
                self.add(key, name, value)
        for key, curves in other.curves.items():
            for kind, summed in curves.items():
                c = self.curves.setdefault(key, {})
                c[kind] = c.get(kind, 0) + summed
        for key, count in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + count
        room = self.show_examples - len(self.examples["images"])
        if room <= 0 or not other.examples["images"]:
            return
        mine, theirs = self.examples, other.examples
        mine["images"] += theirs["images"][:room]
        mine["labels"] += theirs["labels"][:room]
        for key, (trained, randomized) in theirs["maps"].items():
            kept = mine["maps"].setdefault(key, ([], []))
            kept[0].extend(trained[:room])
            kept[1].extend(randomized[:room])
            mine["signed"][key] = theirs["signed"][key]


def merged(world, tally: Tally) -> Tally:
    """The tallies of all ranks added in rank order (each rank scored a contiguous block of the batches),
    the same on every rank; ``tally`` itself in a single process."""
    from xviz.sharding import gather

    if not world.distributed:
        return tally
    parts = gather(world, tally)
    total = Tally(tally.show_examples)
    for part in parts:
        total.absorb(part)
    return total
