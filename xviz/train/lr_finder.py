"""Learning-rate range test (the fastai ``lr_find``): train for a few batches with an exponentially
growing learning rate, record the smoothed loss, stop when it diverges, put everything back.

    result = lr_find(model, loader, optimizer, device="cuda")
    print(result.suggestion)             # the fastai "valley" learning rate
    plot_lr_find(result, "lr_find.png")  # loss vs learning rate, log x axis, suggestions marked

The learning rate of step ``i`` (0-based) is ``start_lr * (end_lr / start_lr) ** (i / (num_iter - 1))``;
the first step uses ``start_lr`` and the last ``end_lr``. The loss is smoothed with a debiased
exponential moving average (``avg = smooth * avg + (1 - smooth) * loss``,
``smoothed = avg / (1 - smooth ** (i + 1))``) and the test stops early once the smoothed loss is
more than ``diverge`` times the best smoothed loss so far, or is NaN/infinite. That divergence rule
(fastai's and torch-lr-finder's) assumes a positive loss: a negative smoothed loss ``s`` is always
above ``diverge * s``, so the test stops at the first step whose smoothed loss is below zero, as in
both references (a loss negative from the first step is an error saying so); pass ``diverge=None``
for such a loss.

Afterwards the model's weights and buffers, the optimizer's state and hyper-parameters, every
module's train/eval mode and torch's random state are exactly what they were before (also when the
test raises), so a training run can follow as if the test had never happened.

Suggestions are computed on the points fastai's ``lr_find`` uses (``fastai/callback/schedule.py``): the
smoothed losses without the first ``num_iter // 10`` and the last 5 recorded points (the start of the
moving average and the blow-up), cut at the first non-finite value (fastai: the first NaN); when that
leaves fewer than 2 points, on all finite points (fastai has no such fallback).

* ``valley`` (the suggestion) is fastai's: the longest strictly decreasing subsequence of the loss and
  its point ``start + int(L / 3) + int(L / 6)`` (fastai's arithmetic, about half-way in; see
  :func:`valley_index` for the one case where xviz departs from it).
* ``steep`` is the learning rate where ``d loss / d log(lr)`` is most negative, by a **central**
  difference (``numpy.gradient``, as torch-lr-finder and fastai v1 compute it). fastai v2's ``steep``
  uses a **forward** difference ``(L[i+1] - L[i]) / (log lr[i+1] - log lr[i])`` and reports ``lr[i]``; on
  a noisy curve the two can disagree: a one-batch dip gives the forward difference its most negative
  value, while the central difference averages the slopes on both sides of each point.
* ``minimum`` is fastai's: the learning rate of the lowest loss divided by 10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from xviz.errors import XvizError
from xviz.render import save_png

SKIP_END = 5  # points dropped at the end before suggesting (fastai's lr_find uses [num_it // 10 : -5])


@dataclass(frozen=True)
class LRFinderResult:
    """What the range test recorded (one entry per step) and the learning rates it suggests."""

    lrs: tuple[float, ...]
    losses: tuple[float, ...]  # smoothed (debiased EMA)
    raw_losses: tuple[float, ...]
    steep: float
    valley: float
    minimum: float
    stopped_early: bool
    suggestion: float = field(init=False)  # = valley

    def __post_init__(self):
        object.__setattr__(self, "suggestion", self.valley)


# --- the test ------------------------------------------------------------------------------------

def lr_find(model: nn.Module, loader, optimizer: torch.optim.Optimizer, *, loss_fn=F.cross_entropy,
            start_lr: float = 1e-7, end_lr: float = 10.0, num_iter: int = 100, smooth: float = 0.98,
            diverge: float | None = 4.0, device="cpu", progress: bool = True) -> LRFinderResult:
    """Run the exponential learning-rate range test and restore everything afterwards.

    ``loader`` yields ``(inputs, targets, ...)`` batches and is cycled when it has fewer than
    ``num_iter`` batches; batches are moved to ``device`` (the model must already be there).
    Parameter groups keep their learning-rate ratios to the first group (discriminative learning
    rates): group ``g`` gets ``lr * initial_lr[g] / initial_lr[0]`` (every group gets ``lr`` when the
    first group's is 0). The model trains in train mode; a step whose loss is not finite is not
    applied. ``diverge=None`` stops only on a non-finite loss (use it for a loss that can be
    negative: the divergence rule stops at the first negative smoothed loss). ``progress=False``
    hides the tqdm bar.
    """
    _check_arguments(start_lr, end_lr, num_iter, smooth, diverge)
    groups = optimizer.param_groups
    first = float(groups[0]["lr"])
    ratios = [float(g["lr"]) / first if first > 0 else 1.0 for g in groups]
    saved = _snapshot(model, optimizer)
    lrs, losses, raw_losses = [], [], []
    stopped_early = diverged = False
    try:
        model.train()
        batches = _cycle(loader)
        avg, best = 0.0, math.inf
        bar = tqdm(total=num_iter, desc="lr-find", unit="step", leave=False, disable=not progress)
        try:
            for i in range(num_iter):
                lr = exponential_lr(i, start_lr, end_lr, num_iter)
                for group, ratio in zip(groups, ratios):
                    group["lr"] = lr * ratio
                batch = next(batches)
                inputs, targets = batch[0].to(device), batch[1].to(device)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(inputs), targets)
                value = float(loss.item())
                if math.isfinite(value):
                    loss.backward()
                    optimizer.step()
                avg = smooth * avg + (1.0 - smooth) * value
                smoothed = avg / (1.0 - smooth ** (i + 1))
                lrs.append(lr)
                raw_losses.append(value)
                losses.append(smoothed)
                bar.update(1)
                bar.set_postfix(lr=f"{lr:.2e}", loss=f"{smoothed:.4f}")
                if not math.isfinite(smoothed):
                    stopped_early = i < num_iter - 1
                    break
                best = min(best, smoothed)
                if diverge is not None and smoothed > diverge * best:
                    stopped_early, diverged = i < num_iter - 1, True
                    break
        finally:
            bar.close()
    finally:
        _restore(model, optimizer, saved)
    if diverged and len(lrs) == 1:  # s > diverge * s at the first step: only a negative loss does that
        raise XvizError(f"the range test stopped at its first step: the loss {losses[0]:.4g} is negative, and the "
                        f"divergence rule (stop once the smoothed loss exceeds {diverge:g}x its best) stops a "
                        "negative loss at once: pass diverge=None, or use a loss that stays positive")
    steep, valley, minimum = suggest(lrs, losses, num_iter)
    return LRFinderResult(tuple(lrs), tuple(losses), tuple(raw_losses), steep, valley, minimum, stopped_early)


def exponential_lr(i: int, start_lr: float, end_lr: float, num_iter: int) -> float:
    """The learning rate of step ``i``: ``start * (end / start) ** (i / (num_iter - 1))``, exact at both ends."""
    if i == 0:
        return float(start_lr)
    if i == num_iter - 1:
        return float(end_lr)
    return start_lr * (end_lr / start_lr) ** (i / (num_iter - 1))


def _check_arguments(start_lr, end_lr, num_iter, smooth, diverge):
    if not (start_lr > 0 and end_lr > start_lr and math.isfinite(end_lr)):
        raise XvizError(f"the learning-rate range needs 0 < start_lr < end_lr (got {start_lr:g} .. {end_lr:g})")
    if int(num_iter) != num_iter or num_iter < 2:
        raise XvizError(f"the range test needs at least 2 iterations (got {num_iter})")
    if not 0.0 <= smooth < 1.0:
        raise XvizError(f"the loss smoothing factor must be in [0, 1) (got {smooth:g})")
    if diverge is not None and not diverge > 1.0:
        raise XvizError(f"the divergence factor must be above 1 (got {diverge:g}), or None to stop only on NaN")


def _cycle(loader):
    while True:
        empty = True
        for batch in loader:
            empty = False
            if getattr(batch[1], "numel", lambda: 1)() == 0:  # every image of the batch failed to decode
                continue
            yield batch
        if empty:
            raise XvizError("the learning-rate finder got an empty data loader: it yields no batches")


# --- saving and restoring ------------------------------------------------------------------------

def _clone(value):
    """A deep copy in which every tensor is a fresh CPU tensor with the same bits."""
    if torch.is_tensor(value):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    return value


def _snapshot(model: nn.Module, optimizer) -> dict:
    return {
        "model": _clone(model.state_dict()),
        "optimizer": _clone(optimizer.state_dict()),
        "modes": [(module, module.training) for module in model.modules()],
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
    }


def _restore(model: nn.Module, optimizer, saved: dict) -> None:
    optimizer.zero_grad(set_to_none=True)
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        model.load_state_dict(saved["model"])  # copies in place: the optimizer keeps its parameters
    optimizer.load_state_dict(saved["optimizer"])  # state and hyper-parameters (lr of every group)
    for module, training in saved["modes"]:
        module.training = training
    torch.set_rng_state(saved["rng"])
    if saved["cuda_rng"] is not None:
        torch.cuda.set_rng_state_all(saved["cuda_rng"])


# --- suggestions ---------------------------------------------------------------------------------

def suggest(lrs, losses, num_iter: int | None = None) -> tuple[float, float, float]:
    """``(steep, valley, minimum)`` for recorded learning rates and smoothed losses (see the module doc)."""
    lrs, losses = np.asarray(lrs, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    finite = np.isfinite(losses)
    end = int(np.argmin(finite)) if not finite.all() else len(losses)  # cut at the first non-finite loss
    num_iter = len(lrs) if num_iter is None else num_iter
    lo, hi = num_iter // 10, min(end, len(losses) - SKIP_END)
    if hi - lo < 2:
        lo, hi = 0, end
    if hi - lo < 2:
        if end < len(losses):
            raise XvizError(
                f"the loss was not finite from {'the start' if end == 0 else 'the second step'} of the range test "
                f"(lr {lrs[end]:.3g}): check the data and the model, or start at a lower learning rate")
        raise XvizError(f"the range test recorded {len(losses)} step(s): at least 2 are needed to suggest a "
                        "learning rate")
    x, y = lrs[lo:hi], losses[lo:hi]
    steep = float(x[int(np.argmin(np.gradient(y, np.log(x))))])
    valley = float(x[valley_index(y)])
    minimum = float(x[int(np.argmin(y))] / 10.0)
    return steep, valley, minimum


def valley_index(losses) -> int:
    """fastai's ``valley``: the longest strictly decreasing subsequence ending at ``max_end`` (length
    ``lds``; the first one found on ties), ``max_start = max_end - lds``, and the index
    ``max_start + int(L / 3) + int(L / 6)`` with ``L = max_end - max_start``.

    A loss that never decreases gives index 0, as in fastai. The one departure: when the longest
    decreasing subsequence has length 2 and ends at index 1 (``max_start = -1``, ``L = 2``), fastai's
    index is -1, which Python indexing wraps to the *last* point (the highest learning rate tried);
    xviz clips it to 0, the first point of that subsequence."""
    losses = np.asarray(losses, dtype=np.float64)
    n = len(losses)
    lds = np.ones(n, dtype=np.int64)
    max_start, max_end = 0, 0
    for i in range(1, n):
        earlier = losses[:i] > losses[i]
        if earlier.any():
            lds[i] = lds[:i][earlier].max() + 1
        if lds[i] > lds[max_end]:
            max_end = i
            max_start = max_end - int(lds[max_end])
    sections = (max_end - max_start) / 3
    idx = max_start + int(sections) + int(sections / 2)
    return int(min(max(idx, 0), n - 1))


# --- the figure ----------------------------------------------------------------------------------

def plot_lr_find(result: LRFinderResult, path, title: str | None = None) -> Path:
    """Smoothed (and faint raw) loss vs learning rate on a log axis, the steep and valley points marked
    and labelled with their values; written as a PNG with :func:`xviz.render.save_png`."""
    from matplotlib.figure import Figure

    lrs, losses = np.asarray(result.lrs), np.asarray(result.losses)
    raw = np.asarray(result.raw_losses)
    keep = np.isfinite(losses)
    if keep.sum() < 1:
        raise XvizError("nothing to plot: the range test recorded no finite loss")
    fig = Figure(figsize=(7.2, 4.6))
    ax = fig.add_subplot(1, 1, 1)
    raw_keep = np.isfinite(raw)
    ax.plot(lrs[raw_keep], raw[raw_keep], color="0.75", linewidth=0.8, label="loss (raw, per batch)", zorder=1)
    ax.plot(lrs[keep], losses[keep], color="tab:blue", linewidth=2.0, label="loss (smoothed)", zorder=2)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")

    points = {name: int(np.argmin(np.abs(np.log(lrs) - math.log(lr))))
              for name, lr in (("steep", result.steep), ("valley", result.valley))}
    ax.set_ylim(*_loss_limits(losses[keep], result.stopped_early, losses[list(points.values())], raw[keep]))
    ax.ticklabel_format(axis="y", useOffset=False)

    # the curve falls to the right around both points: labels go above-right and below-left of it,
    # turned inwards near the ends of the axis
    span = math.log(lrs[-1] / lrs[0]) or 1.0
    for name, lr, color, marker, offset, align in (("steep", result.steep, "tab:red", "o", (14, 14), "left"),
                                                   ("valley", result.valley, "tab:green", "D", (-14, -20), "right")):
        i = points[name]
        where = math.log(lr / lrs[0]) / span
        if (align == "right" and where < 0.25) or (align == "left" and where > 0.75):
            offset, align = (-offset[0], offset[1]), ("left" if align == "right" else "right")
        label = f"{name}: {lr:.2e}" + ("  (suggestion)" if name == "valley" else "")
        ax.plot([lr], [losses[i]], marker=marker, markersize=8, color=color, linestyle="none", label=label, zorder=3)
        ax.annotate(f"{name} {lr:.2e}", (lr, losses[i]), xytext=offset, textcoords="offset points", color=color,
                    fontsize=9, ha=align, va="center", arrowprops=dict(arrowstyle="-", color=color, linewidth=0.8))
    note = "stopped early: the loss diverged" if result.stopped_early else f"{len(lrs)} steps"
    ax.set_title((title + "\n" if title else "") + f"learning-rate range test ({note})", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)


def _loss_limits(y: np.ndarray, stopped_early: bool, marked: np.ndarray,
                 raw: np.ndarray | None = None) -> tuple[float, float]:
    """y limits that keep the blow-up at the end from flattening the descent: after a divergence the
    top is the highest loss before the minimum, raised to show at least a quarter of the rise; the
    marked points are always inside, and so is the raw (per-batch) loss ``raw`` (aligned with ``y``)
    up to the smoothed minimum (all of it when the test did not diverge)."""
    lowest, bottom, highest = int(np.argmin(y)), float(np.min(y)), float(np.max(y))
    top = highest
    if stopped_early:
        top = max(float(np.max(y[: lowest + 1])), bottom + 0.25 * (highest - bottom))
    if raw is not None:
        shown = raw[: lowest + 1] if stopped_early else raw
        shown = shown[np.isfinite(shown)]
        if shown.size:
            top, bottom = max(top, float(shown.max())), min(bottom, float(shown.min()))
    marked = marked[np.isfinite(marked)]
    if marked.size:
        top, bottom = max(top, float(marked.max())), min(bottom, float(marked.min()))
    span = max(top - bottom, 1e-3 * max(abs(top), 1.0))
    return bottom - 0.12 * span, top + 0.15 * span


def plot_lr_schedule(result: LRFinderResult, path, title: str | None = None) -> Path:
    """The range test's other picture (fastai's ``plot_lr``): the learning rate of each iteration, on a
    log axis (a straight line: the rate grows exponentially); written with :func:`xviz.render.save_png`."""
    from matplotlib.figure import Figure

    if not result.lrs:
        raise XvizError("nothing to plot: the range test recorded no step")
    fig = Figure(figsize=(7.2, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(range(1, len(result.lrs) + 1), result.lrs, color="tab:blue", linewidth=2.0)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("learning rate (log scale)")
    note = "stopped early: the loss diverged" if result.stopped_early else f"{len(result.lrs)} steps"
    ax.set_title((title + "\n" if title else "") + f"learning rate per iteration ({note})", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path)
