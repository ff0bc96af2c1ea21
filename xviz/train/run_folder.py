"""Run folders: resumable checkpoints (newest N kept), the best and the last model, exact RNG state.

A run folder holds::

    checkpoints/epoch-0007.pt   full training state (model, optimiser, scheduler, scaler, epoch, RNG)
    best.pt                     the model of the epoch with the best test accuracy (an xviz checkpoint)
    last.pt                     the model after the last finished epoch (an xviz checkpoint)
    history.json, history.csv   one row per epoch

Every file is written atomically: a crash or a kill during a save leaves the previous file intact.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import torch

from xviz.checkpoint import read_checkpoint, save_checkpoint
from xviz.errors import XvizError

EPOCH_FILE = re.compile(r"^epoch-(\d+)\.pt$")


def rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) random states as plain types and tensors (weights_only-safe)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RunFolder:
    """Checkpoints of one training run in ``root``."""

    def __init__(self, root: str | Path, keep: int = 3):
        self.root, self.keep = Path(root), keep
        self.checkpoints = self.root / "checkpoints"

    def epoch_files(self) -> list[Path]:
        if not self.checkpoints.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.checkpoints.iterdir() if (m := EPOCH_FILE.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> dict | None:
        """The newest readable full checkpoint (a damaged newest one falls back to the one before).
        Temporaries left by a save that was killed halfway are removed."""
        if self.checkpoints.is_dir():
            for stale in self.checkpoints.glob(".epoch-*.pt.*"):
                stale.unlink(missing_ok=True)
        for path in reversed(self.epoch_files()):
            try:
                data = read_checkpoint(path)
            except XvizError:
                continue
            if "training" in data:
                data["path"] = str(path)
                return data
        return None

    def save(self, epoch: int, model_meta: dict, training: dict, is_best: bool) -> Path:
        """Write epoch ``epoch``'s full checkpoint, ``last.pt`` and (if best) ``best.pt``; prune old ones."""
        path = self.checkpoints / f"epoch-{epoch:04d}.pt"
        try:
            save_checkpoint(path, **model_meta, training=training)
            save_checkpoint(self.root / "last.pt", **model_meta, epoch=epoch)
            if is_best:
                save_checkpoint(self.root / "best.pt", **model_meta, epoch=epoch)
        except OSError as exc:
            previous = [p for p in self.epoch_files() if p != path]
            kept = f"the last good checkpoint `{previous[-1]}` is intact; " if previous else ""
            raise XvizError(f"could not write checkpoint `{path}` ({exc.strerror or exc}): {kept}free space and "
                            f"continue with --resume {self.root}") from None
        for old in self.epoch_files()[:-self.keep]:
            old.unlink(missing_ok=True)
        return path
