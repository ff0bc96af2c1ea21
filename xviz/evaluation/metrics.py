"""The faithfulness metrics, as functions of tensors (see :mod:`xviz.evaluation` for their definitions).

Each is independent of models, datasets and plugins: probabilities, maps and regions in, numbers out."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from xviz.capture import first_output
from xviz.errors import XvizError
from xviz.evaluation.names import BASELINES

def pixel_ranks(maps: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(N, H, W) maps -> (N, H*W) rank of each pixel, 0 for the most important; equal values are
    ordered at random (seeded), so a flat region is removed in no particular direction."""
    n = maps.shape[0]
    flat = maps.reshape(n, -1).float()
    g = torch.Generator().manual_seed(seed)
    shuffle = torch.argsort(torch.rand(flat.shape, generator=g), dim=1).to(flat.device)
    order = torch.gather(shuffle, 1, torch.argsort(torch.gather(flat, 1, shuffle), dim=1, descending=True,
                                                   stable=True))
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


def class_probability(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Softmax probability of ``targets[i]`` for each image ``x[i]``, in chunks, without a graph."""
    out = []
    with torch.inference_mode():
        for start in range(0, x.shape[0], chunk):
            logits = first_output(model(x[start:start + chunk])).float()
            out.append(torch.softmax(logits, 1).gather(1, targets[start:start + chunk, None])[:, 0])
    return torch.cat(out) if out else x.new_zeros(0)


class ChannelsLast(nn.Module):
    """A copy of a convolutional model in channels-last memory format (about 1.8x faster on CPU for
    the many scoring forwards); the caller's model is left as it was."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.inner = copy.deepcopy(module).to(memory_format=torch.channels_last)

    def forward(self, x):
        return self.inner(x.contiguous(memory_format=torch.channels_last))


def scoring_model(module: nn.Module) -> nn.Module:
    """What scores perturbed images: a channels-last copy of a model with 2-d convolutions, else itself."""
    if any(isinstance(m, nn.Conv2d) for m in module.modules()):
        return ChannelsLast(module).eval()
    return module


def perturbation_curves(model: nn.Module, x: torch.Tensor, baseline: torch.Tensor, maps: torch.Tensor,
                        targets: torch.Tensor, steps: int = 20, chunk: int = 256, seed: int = 0,
                        full: torch.Tensor | None = None, empty: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Deletion and insertion curves, (N, steps + 1) probabilities each (see the module docstring).

    ``full`` / ``empty``: the probabilities on ``x`` and on ``baseline`` when already known (they are
    the curves' ends, shared by all methods); the ``2 * (steps - 1) * N`` perturbed images in between
    are scored in batches of ``chunk``.
    """
    n, c, h, w = x.shape
    full = class_probability(model, x, targets, chunk) if full is None else full
    empty = class_probability(model, baseline, targets, chunk) if empty is None else empty
    ranks = pixel_ranks(maps, seed).to(x.device)
    counts = torch.round(torch.linspace(0, 1, steps + 1) * h * w).long().to(x.device)
    pairs = [(i, s) for i in range(n) for s in range(1, steps)]
    scores = torch.empty(2, len(pairs), device=x.device)
    half = max(1, chunk // 2)
    for start in range(0, len(pairs), half):
        idx = torch.tensor(pairs[start:start + half], device=x.device)
        img, step = idx[:, 0], idx[:, 1]
        first = (ranks[img] < counts[step, None]).view(-1, 1, h, w)  # the top pixels of each pair's map
        deleted = torch.where(first, baseline[img], x[img])
        inserted = torch.where(first, x[img], baseline[img])
        probs = class_probability(model, torch.cat([deleted, inserted]), torch.cat([targets[img], targets[img]]), chunk)
        scores[:, start:start + len(idx)] = probs.view(2, -1)
    inner = scores.view(2, n, max(steps - 1, 0))
    deletion = torch.cat([full[:, None], inner[0], empty[:, None]], 1)
    insertion = torch.cat([empty[:, None], inner[1], full[:, None]], 1)
    return {"deletion": deletion, "insertion": insertion}


def auc(curves: torch.Tensor) -> torch.Tensor:
    """Area under each (N, steps + 1) curve over the fraction axis [0, 1] (trapezoid rule)."""
    return torch.trapezoid(curves, dx=1.0 / (curves.shape[1] - 1), dim=1)


def average_drop_increase(full: torch.Tensor, masked: torch.Tensor) -> tuple[float, float]:
    """Average drop ``100 * mean(max(0, Y - O) / Y)`` and increase in confidence ``100 * mean(O > Y)``
    for probabilities ``Y`` (full images) and ``O`` (images masked by their explanation)."""
    full, masked = full.double(), masked.double()
    drop = (full - masked).clamp_min(0) / full.clamp_min(1e-12)
    return 100.0 * float(drop.mean()), 100.0 * float((masked > full).double().mean())


def mask_by_map(x: torch.Tensor, maps: torch.Tensor, black: torch.Tensor) -> torch.Tensor:
    """The image multiplied by its map in pixel space: ``black + M+ * (x - black)`` on normalised
    inputs, where ``black`` is the normalised value of a black pixel, (C,) or (N, C, H, W)."""
    m = maps.clamp_min(0).unsqueeze(1).to(x)
    black = black.to(x)
    if black.dim() == 1:
        black = black[None, :, None, None]
    return black + m * (x - black)


def pointing_game(maps: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """(N,) hits: the (first) maximum of each (N, H, W) map lies inside its boolean region; a blank
    map (all values equal) misses."""
    flat = maps.reshape(maps.shape[0], -1)
    at = flat.argmax(1)
    blank = (flat.amax(1) - flat.amin(1)) <= 0
    return regions.reshape(regions.shape[0], -1).gather(1, at[:, None])[:, 0].bool() & ~blank


def energy_pointing(maps: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """(N,) share of each map's positive energy inside its region: ``sum(M+ * R) / sum(M+)`` (0 for a
    map with no positive value)."""
    m = maps.clamp_min(0).reshape(maps.shape[0], -1).double()
    inside = (m * regions.reshape(regions.shape[0], -1).double()).sum(1)
    total = m.sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-300), torch.zeros_like(total))


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation (average ranks for ties) of each pair of (N, H, W) maps. Two
    constant maps correlate 1 if equal, else 0; one constant map correlates 0."""
    from scipy.stats import rankdata

    ra = rankdata(a.reshape(a.shape[0], -1), axis=1)
    rb = rankdata(b.reshape(b.shape[0], -1), axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))
    same = np.all(a.reshape(len(a), -1) == b.reshape(len(b), -1), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(den > 0, (ra * rb).sum(1) / np.where(den > 0, den, 1), np.where(same, 1.0, 0.0))
    return rho


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """Structural similarity (skimage, 7x7 windows) of each pair of (N, H, W) maps."""
    from skimage.metrics import structural_similarity

    win = min(7, *a.shape[1:])
    win -= 1 - win % 2  # odd
    return np.array([structural_similarity(x, y, data_range=data_range, win_size=win) for x, y in zip(a, b)])


def randomized_copy(module: nn.Module, layers: int = 3, seed: int = 0) -> tuple[nn.Module, list[str]]:
    """A copy of ``module`` whose last ``layers`` weight layers (modules with a weight of two or more
    dimensions: convolutions, linear layers; counted from the output in definition order) are
    re-initialised by their ``reset_parameters``; returns it and their names."""
    clone = copy.deepcopy(module)
    weighted = [(name, m) for name, m in clone.named_modules()
                if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() >= 2
                and hasattr(m, "reset_parameters")]
    if not weighted:
        raise XvizError("the model has no convolution or linear layer to randomise for the sanity check")
    chosen = weighted[-layers:] if layers > 0 else []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _, m in chosen:
            m.reset_parameters()
    return clone, [name for name, _ in reversed(chosen)]


def make_baseline(x: torch.Tensor, kind: str, black: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """What removed pixels become: ``blur`` (Gaussian, sigma = image side / 16 unless given),
    ``mean`` (each image's mean colour), ``black`` or ``zero`` (0 in normalised space: the
    normalisation's mean colour)."""
    if kind == "blur":
        from torchvision.transforms.functional import gaussian_blur

        sigma = sigma or max(x.shape[-2:]) / 16
        k = min(2 * math.ceil(3 * sigma) + 1, 2 * ((min(x.shape[-2:]) - 1) // 2) + 1)
        return gaussian_blur(x, [k, k], [sigma, sigma])
    if kind == "mean":
        return x.mean((2, 3), keepdim=True).expand_as(x).clone()
    if kind == "black":
        return black.to(x)[None, :, None, None].expand_as(x).clone()
    if kind == "zero":
        return torch.zeros_like(x)
    raise XvizError(f"unknown baseline `{kind}`: use {', '.join(BASELINES)}")
