"""Learning-rate sweep: the same short training run at several constant learning rates, the training
loss of every step recorded; the picture of a rate that is too small (the loss barely moves), a good
one and one too large (the loss jumps or diverges).

    runs = lr_sweep(cfg, [1e-4, 1e-2, 1.0], steps=60)
    plot_lr_sweep(runs, "lr_sweep.png")

Every rate starts from the same weights (the model is built afresh with ``cfg.seed``) and sees the same
batches in the same order (a loader seeded with ``cfg.seed``); only the rate differs. The rate stays
constant (no schedule, no freezing): the figure shows the rate, nothing else. A step whose loss is not
finite ends that rate's run (it diverged).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from xviz.errors import XvizError
from xviz.render import save_png

SMOOTH = 0.9  # the drawn curve: debiased exponential moving average of the per-step loss


@dataclass(frozen=True)
class SweepRun:
    """One learning rate's run: the loss of each step (``losses``), and whether it diverged."""

    lr: float
    losses: tuple[float, ...]
    diverged: bool


def smoothed(losses, smooth: float = SMOOTH) -> np.ndarray:
    """Debiased EMA: ``avg = smooth * avg + (1 - smooth) * loss``, ``s_i = avg / (1 - smooth ** (i + 1))``."""
    out, avg = [], 0.0
    for i, value in enumerate(losses):
        avg = smooth * avg + (1.0 - smooth) * value
        out.append(avg / (1.0 - smooth ** (i + 1)))
    return np.asarray(out, dtype=np.float64)


def _batches(loader):
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise XvizError("the learning-rate sweep got an empty training set")


def lr_sweep(cfg, lrs, steps: int, pm=None, device="cpu", progress: bool = True) -> list[SweepRun]:
    """Train ``cfg``'s model ``steps`` steps at each rate of ``lrs`` from the same start, on the same batches."""
    from xviz import registry
    from xviz.train.loop import build_data, build_model
    from xviz.train.schedules import make_optimizer

    if steps < 1:
        raise XvizError(f"`--steps {steps}` must be at least 1")
    if not lrs or any(not (lr > 0 and math.isfinite(lr)) for lr in lrs):
        raise XvizError(f"the learning rates must be positive numbers, got {', '.join(map(str, lrs)) or 'none'}")
    pm = pm or registry.default_plugin_manager()
    train_set, _, classes, _ = build_data(cfg, pm)
    runs = []
    bar = tqdm(total=steps * len(lrs), desc="lr-sweep", unit="step", disable=not progress)
    for lr in lrs:
        torch.manual_seed(cfg.seed)
        model, _ = build_model(cfg, len(classes), pm, log=lambda *a: None)
        model.to(device).train()
        optimizer = make_optimizer(model, dataclasses.replace(cfg, lr=float(lr)))
        loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                                             num_workers=cfg.workers,
                                             generator=torch.Generator().manual_seed(cfg.seed))
        losses, diverged, batches = [], False, _batches(loader)
        for _ in range(steps):
            x, y = (t.to(device) for t in next(batches)[:2])
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            value = float(loss.item())
            losses.append(value)
            bar.update(1)
            bar.set_postfix(lr=f"{lr:.2g}", loss=f"{value:.3f}")
            if not math.isfinite(value):
                diverged = True
                bar.update(steps - len(losses))
                break
            loss.backward()
            optimizer.step()
        runs.append(SweepRun(float(lr), tuple(losses), diverged))
    bar.close()
    return runs


def plot_lr_sweep(runs: list[SweepRun], path, labels=None, title: str | None = None):
    """Training loss against step, one colour per rate: the per-step loss faint, its smoothed curve
    (:func:`smoothed`) bold; a diverged run ends in a cross. The y axis shows 90 % of every smoothed
    curve (at most ten times the first loss), so a blow-up does not flatten the others."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    if not runs:
        raise XvizError("nothing to plot: no learning rate was swept")
    labels = list(labels or [])
    fig = Figure(figsize=(8.0, 4.6))
    ax = fig.add_subplot(1, 1, 1)
    palette = colormaps["tab10"].colors
    firsts = [r.losses[0] for r in runs if r.losses and math.isfinite(r.losses[0])]
    curves = [smoothed([v for v in r.losses if math.isfinite(v)]) for r in runs]
    highest = max((float(np.percentile(c, 90)) for c in curves if len(c)), default=1.0)
    top = min(1.1 * highest, 10.0 * max(firsts)) if firsts else 1.1 * highest
    for i, run in enumerate(runs):
        color = palette[i % len(palette)]
        values = np.asarray(run.losses, dtype=np.float64)
        finite = np.isfinite(values)
        steps = np.arange(1, len(values) + 1)
        name = f"lr {run.lr:g}" + (f" ({labels[i]})" if i < len(labels) and labels[i] else "")
        if run.diverged:
            name += f": diverged at step {len(values)}"
        ax.plot(steps[finite], values[finite], color=color, alpha=0.25, linewidth=0.8)
        ax.plot(steps[finite], smoothed(values[finite]), color=color, linewidth=2.2, label=name)
        if run.diverged or (finite.any() and values[finite][-1] > top):
            last = int(np.flatnonzero(finite)[-1]) if finite.any() else 0
            ax.plot([steps[last]], [min(values[last] if finite.any() else top, top)], marker="x", color=color,
                    markersize=10, markeredgewidth=2.5)
    ax.set_ylim(0, top)
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss (cross-entropy)")
    ax.set_title(title or "the same run at three learning rates", fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=9, loc="upper right")
    fig.tight_layout()
    return save_png(fig, path)
