"""The faithfulness metrics, as functions of tensors (see :mod:`xviz.evaluation` for their definitions).

Each is independent of models, datasets and plugins: probabilities, maps and regions in, numbers out."""

from __future__ import annotations

import copy
import hashlib
import math
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from xviz.capture import first_output
from xviz.errors import XvizError
from xviz.evaluation.names import BASELINES

def image_seed(run_seed: int, identity) -> int:
    """The seed of one image: a hash of the run's seed and the image's identity (its dataset index or
    file name), so that its random draws do not depend on the batch it was scored in."""
    digest = hashlib.sha256(f"{int(run_seed)}:{identity}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2 ** 63)


def pixel_ranks(maps: torch.Tensor, seed: int | Sequence[int] = 0) -> torch.Tensor:
    """(N, H, W) maps -> (N, H*W) rank of each pixel, 0 for the most important; equal values are
    ordered at random from each image's own seed (``seed``: one per image, or one for all), so an
    image's order depends on its map and its seed only, never on its batch or position."""
    n = maps.shape[0]
    flat = maps.reshape(n, -1).float()
    seeds = [int(seed)] * n if isinstance(seed, int) else [int(s) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"{len(seeds)} seeds for {n} maps")
    noise = torch.stack([torch.rand(flat.shape[1], generator=torch.Generator().manual_seed(s)) for s in seeds]) \
        if n else torch.zeros(flat.shape)
    shuffle = torch.argsort(noise, dim=1).to(flat.device)
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
                        targets: torch.Tensor, steps: int = 20, chunk: int = 256, seed: int | Sequence[int] = 0,
                        full: torch.Tensor | None = None, empty: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Deletion and insertion curves, (N, steps + 1) probabilities each (see the module docstring).

    ``full`` / ``empty``: the probabilities on ``x`` and on ``baseline`` when already known (they are
    the curves' ends, shared by all methods); the ``2 * (steps - 1) * N`` perturbed images in between
    are scored in batches of ``chunk``. ``seed``: the tie-breaking seed of each image (see
    :func:`pixel_ranks`).
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


def pointing_tolerance(size: tuple[int, int]) -> float:
    """The default pointing tolerance: Zhang et al.'s 15 px at 224 px inputs, scaled to the shorter side."""
    return 15.0 * min(size) / 224.0


def pointing_game(maps: torch.Tensor, regions: torch.Tensor, tolerance: float = 0.0) -> torch.Tensor:
    """(N,) hits of the pointing game on the positive evidence ``M+`` of each (N, H, W) map: a hit
    when a maximum of ``M+`` lies within ``tolerance`` pixels (Euclidean) of the boolean region;
    when several pixels tie for the maximum, any of them within reach is a hit (as Quantus counts);
    a map with no positive value misses."""
    from scipy.ndimage import distance_transform_edt

    flat = maps.clamp_min(0).reshape(maps.shape[0], -1).double()
    peak = flat.amax(1, keepdim=True)
    maxima = (flat == peak) & (peak > 0)
    hits = []
    for m, region in zip(maxima, regions.reshape(regions.shape[0], *regions.shape[-2:]).cpu().numpy().astype(bool)):
        near = region if tolerance <= 0 or not region.any() else distance_transform_edt(~region) <= tolerance
        hits.append(bool((m.cpu().numpy() & near.reshape(-1)).any()))
    return torch.tensor(hits, dtype=torch.bool)


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


# --- ROAD (Rong et al., ICML 2022) ---------------------------------------------------------------

ROAD_PERCENTILES = (10, 30, 50, 70, 90)
ROAD_NOISE = 0.01
# the imputation's neighbour weights (row offset, column offset) -> weight, as in the paper's code
_NEIGHBOURS = {(1, 1): 1 / 12, (0, 1): 1 / 6, (-1, 1): 1 / 12, (1, -1): 1 / 12, (0, -1): 1 / 6, (-1, -1): 1 / 12,
               (1, 0): 1 / 6, (-1, 0): 1 / 6}


def noisy_linear_imputation(image: torch.Tensor, keep: np.ndarray, noise: float = ROAD_NOISE,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """(C, H, W) image with the pixels where ``keep`` (H, W) is False replaced (Rong et al. 2022): each
    removed value is the weighted mean of its 8 neighbours (1/6 side, 1/12 diagonal, renormalised at the
    border), solved jointly as one sparse linear system per image, plus ``noise * N(0, 1)``."""
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import spsolve

    c, h, w = image.shape
    keep_flat = keep.reshape(-1).astype(bool)
    missing = np.flatnonzero(~keep_flat)
    out = image.reshape(c, -1).clone()
    if missing.size == 0:
        return out.reshape(c, h, w)
    values = image.reshape(c, -1).cpu().numpy().astype(np.float64)
    unknown = np.full(h * w, -1)
    unknown[missing] = np.arange(missing.size)
    row, col = missing // w, missing % w
    rhs = np.zeros((missing.size, c))
    diagonal = np.ones(missing.size)
    rows, cols, data = [], [], []
    for (dr, dc), weight in _NEIGHBOURS.items():
        r, k = row + dr, col + dc
        inside = (r >= 0) & (k >= 0) & (r < h) & (k < w)
        diagonal[~inside] -= weight
        at = np.where(inside, r * w + k, 0)
        known = inside & keep_flat[at]
        rhs[known] -= weight * values[:, at[known]].T
        free = inside & ~keep_flat[at]
        rows.append(np.flatnonzero(free))
        cols.append(unknown[at[free]])
        data.append(np.full(int(free.sum()), weight))
    rows.append(np.arange(missing.size))
    cols.append(np.arange(missing.size))
    data.append(-diagonal)
    system = csc_matrix((np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))),
                        shape=(missing.size, missing.size))
    solved = torch.tensor(spsolve(system, rhs).reshape(missing.size, c), dtype=torch.float).t()
    filled = solved + noise * torch.randn(solved.shape, generator=generator)
    out[:, torch.from_numpy(missing)] = filled.to(out)
    return out.reshape(c, h, w)


def road_seed(seed: int, most_first: bool, percentile: float) -> int:
    """The noise seed of one ROAD imputation of an image (``seed``: the image's seed)."""
    return (int(seed) * 1_000_003 + (0 if most_first else 500) + int(round(percentile))) % (2 ** 63)


def road_order_values(ranks: torch.Tensor) -> torch.Tensor:
    """Tie-free relevance values ``H*W - 1 - rank`` (N, H*W) from :func:`pixel_ranks`: ROAD's percentiles
    are taken of these, so tied pixels are split by the same seeded order as in deletion."""
    return (ranks.shape[1] - 1 - ranks).float()


def road_probabilities(model: nn.Module, x: torch.Tensor, ranks: torch.Tensor, targets: torch.Tensor,
                       seeds: Sequence[int], percentiles: Sequence[float] = ROAD_PERCENTILES,
                       noise: float = ROAD_NOISE, chunk: int = 256) -> dict[str, torch.Tensor]:
    """ROAD (remove and debias): (N, P) probabilities of the explained class after noisy linear
    imputation of pixels chosen by each map. ``morf`` (most relevant first) at percentile ``p`` removes
    the pixels whose relevance is at or above the map's ``p``-th percentile (the top ``100 - p`` %);
    ``lerf`` (least relevant first) those at or below its ``100 - p``-th (the bottom ``100 - p`` %),
    the convention of pytorch-grad-cam's ``ROADMostRelevantFirst``/``ROADLeastRelevantFirst``."""
    n, c, h, w = x.shape
    values = road_order_values(ranks).cpu().numpy()
    out = {}
    for kind, most_first in (("morf", True), ("lerf", False)):
        images = []
        for i in range(n):
            v = values[i] if most_first else 1 - values[i]
            for p in percentiles:
                keep = (v < np.percentile(v, p)).reshape(h, w)
                g = torch.Generator().manual_seed(road_seed(seeds[i], most_first, p))
                images.append(noisy_linear_imputation(x[i].cpu(), keep, noise, g))
        batch = torch.stack(images).to(x.device)
        probs = class_probability(model, batch, targets.repeat_interleave(len(percentiles)), chunk)
        out[kind] = probs.view(n, len(percentiles)).cpu()
    return out


# --- captum's metrics ------------------------------------------------------------------------------

def _tensor(inputs) -> torch.Tensor:
    """captum hands an explanation function its inputs as a one-tensor tuple."""
    return inputs[0] if isinstance(inputs, tuple) else inputs


def _seeded(seed: int, fn: Callable):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return fn()


def infidelity_scores(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor,
                      seeds: Sequence[int], samples: int = 10, noise: float = 0.003) -> torch.Tensor:
    """(N,) ``captum.metrics.infidelity`` (Yeh et al., NeurIPS 2019) of each map (expanded over the
    colour channels) for the softmax probability of the explained class, with Gaussian perturbations
    ``I ~ N(0, noise^2)`` and ``normalize=True`` (the attribution scaled by its best factor); seeded per image."""
    from captum.metrics import infidelity

    def forward(inputs):
        return torch.softmax(first_output(model(inputs)).float(), 1)

    def perturb(inputs):
        i = noise * torch.randn_like(inputs)
        return i, inputs - i

    out = []
    for k in range(x.shape[0]):
        attribution = maps[k][None, None].to(x).expand_as(x[k:k + 1])
        out.append(_seeded(seeds[k], lambda: infidelity(forward, perturb, x[k:k + 1], attribution,
                                                        target=int(targets[k]), n_perturb_samples=samples,
                                                        normalize=True)))
    return torch.cat(out).detach().cpu().double() if out else torch.zeros(0)


def sensitivity_scores(explain: Callable[[torch.Tensor, int], torch.Tensor], x: torch.Tensor, targets: torch.Tensor,
                       seeds: Sequence[int], samples: int = 5, radius: float = 0.02) -> torch.Tensor:
    """(N,) ``captum.metrics.sensitivity_max`` (Yeh et al., NeurIPS 2019): the largest Frobenius norm of
    the change of the map when the input moves uniformly within ``radius``; ``explain(inputs, target)``
    returns the maps (n, H, W) of a batch for one class; seeded per image."""
    from captum.metrics import sensitivity_max

    out = []
    for k in range(x.shape[0]):
        t = int(targets[k])
        def maps_of(inputs, t=t):  # (n, 1, H, W): captum compares explanations batched like the inputs
            return explain(_tensor(inputs), t)[:, None]

        out.append(_seeded(seeds[k], lambda: sensitivity_max(maps_of, x[k:k + 1], perturb_radius=radius,
                                                             n_perturb_samples=samples)))
    return torch.cat(out).detach().cpu().double() if out else torch.zeros(0)
