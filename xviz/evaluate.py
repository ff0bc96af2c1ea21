"""``xviz evaluate``: how faithful each explanation method is to the model, in numbers.

For every image the model's predicted class is explained (one shared :func:`explain_tensors`
pass per batch for all methods) and each method's input-size map ``M`` (``Explanation.maps``;
for signed methods only its positive part counts as evidence) is scored by:

* **deletion / insertion AUC** (Petsiuk et al., RISE, BMVC 2018): the pixels are ranked by ``M``
  (ties in random order, seeded); at ``s = 0 .. steps`` the top ``s / steps`` of them are replaced
  by the baseline (deletion) or copied onto the baseline (insertion), and the softmax probability
  ``p_s`` of the explained class is read. ``AUC = sum_s (p_s + p_{s+1}) / (2 * steps)`` (trapezoid
  on the fraction axis [0, 1]). Deletion: lower is better; insertion: higher is better.
* **average drop / increase in confidence** (Chattopadhay et al., Grad-CAM++, WACV 2018): with
  ``Y`` the probability on the image and ``O`` the one on the image multiplied by ``M`` (pixel
  values, so ``M = 0`` is black), ``drop = 100 * mean(max(0, Y - O) / Y)`` (lower is better) and
  ``increase = 100 * mean(O > Y)`` (higher is better).
* **pointing game** (Zhang et al., ECCV 2016): a hit when the map's maximum lies inside the region
  (no tolerance); **energy-based pointing game** (Wang et al., Score-CAM, CVPRW 2020):
  ``sum(M+ * region) / sum(M+)``. Regions are the synthetic dataset's ``object`` and ``part``
  masks, or CUB's bounding ``box``; a blank map scores 0.
* **model-randomisation sanity check** (Adebayo et al., NeurIPS 2018): the top ``randomize``
  weight layers (convolutions and linear layers, counted from the output; for ``xviz-demo``
  ``classifier``, ``features.17``, ``features.14``: the classifier and the two convolutions of the last block) are
  re-initialised with their own ``reset_parameters`` (seeded), the same images are explained for
  the same classes, and the original and randomised maps are compared: Spearman rank correlation
  (of ``|M|`` for signed methods) and SSIM. A method whose mean rank correlation stays at or above
  ``flag_above`` (0.5) is **flagged**: its maps do not depend on what the model learnt.

The ``random`` reference row is a map of uniform noise (a function of the image alone): what
chance scores, and a method the sanity check must flag.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xviz import registry
from xviz.errors import XvizError
from xviz.explainer import explain_tensors, resolve_layer, resolve_methods
from xviz.capture import first_output, preserved_state
from xviz.methods import Context, Method
from xviz.models import LoadedModel

METRICS = ("deletion", "insertion", "drop", "pointing", "sanity")
BASELINES = ("blur", "mean", "black", "zero")
RANDOM = "random"

# column -> (heading, True when higher is better); the table, CSV and chart follow this order
COLUMNS = {
    "ins_minus_del": ("ins-del", True),
    "deletion": ("deletion AUC", False),
    "insertion": ("insertion AUC", True),
    "average_drop": ("avg drop %", False),
    "increase": ("increase %", True),
    "pointing_object": ("pointing object", True),
    "energy_object": ("energy object", True),
    "pointing_part": ("pointing part", True),
    "energy_part": ("energy part", True),
    "pointing_box": ("pointing box", True),
    "energy_box": ("energy box", True),
    "sanity_spearman": ("rand. spearman", False),
    "sanity_ssim": ("rand. SSIM", False),
}


# --- the metrics, on tensors ---------------------------------------------------------------------

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


class RandomMap(Method):
    """Uniform noise, a function of the image alone: the chance level of every metric."""

    name = RANDOM
    summary = "uniform random map (reference)"
    uses_layer = False

    def compute(self, ctx: Context) -> torch.Tensor:
        x = ctx.inputs.detach().double().cpu()
        out = []
        for img in x:  # the same image gets the same map, whichever model explains it
            seed = int(img.abs().sum() * 1000 + img.flatten()[:: max(1, img.numel() // 97)].sum() * 7) % (2 ** 31)
            out.append(torch.rand(ctx.targets.shape[1], *img.shape[-2:], generator=torch.Generator().manual_seed(seed)))
        return torch.stack(out).to(ctx.inputs.device)


# --- datasets ------------------------------------------------------------------------------------

class ImageFolder:
    """Images of a folder, preprocessed for the model; no labels, no regions."""

    def __init__(self, folder, preprocessing):
        from xviz.images import list_images

        self.paths = list_images([folder])
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from xviz.images import read_image

        return self.preprocessing.tensor(read_image(self.paths[index])), -1


def region_kinds(dataset) -> tuple[str, ...]:
    """The regions a dataset annotates: ``object`` and ``part`` masks, or a ``box``."""
    if hasattr(dataset, "masks"):
        return ("object", "part")
    if hasattr(dataset, "box"):
        return ("box",)
    return ()


def _geometry(mask: np.ndarray, preprocessing, size: tuple[int, int]) -> np.ndarray:
    """A boolean mask of the original image, resized and cropped as the image was."""
    from PIL import Image

    img = Image.fromarray(mask.astype(np.uint8) * 255)
    if preprocessing is not None:
        img = preprocessing.view(img.convert("RGB")).convert("L")
    if img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(img) >= 128


def regions_of(dataset, index: int, preprocessing, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """``{region: (H, W) bool}`` for item ``index``, in the model input's geometry."""
    kinds = region_kinds(dataset)
    if "box" in kinds:
        w, h = dataset.image(index).size
        bx, by, bw, bh = dataset.box(index)
        mask = np.zeros((h, w), bool)
        mask[max(0, int(round(by))):int(round(by + bh)), max(0, int(round(bx))):int(round(bx + bw))] = True
        return {"box": _geometry(mask, preprocessing, size)}
    if kinds:
        masks = dataset.masks(index)
        return {k: _geometry(np.asarray(masks[k]), preprocessing, size) for k in kinds if k in masks}
    return {}


# --- what applies --------------------------------------------------------------------------------

def applicable_methods(model: LoadedModel | nn.Module, example: torch.Tensor, names: Sequence[str] | None = None,
                       layer: str | None = None, pm=None) -> tuple[list[Method], dict[str, str]]:
    """The methods (``names``, default: all registered) that apply to the model, and for the others
    why not: ``(applicable, {name: reason})``."""
    pm = pm or registry.default_plugin_manager()
    module = model.module if isinstance(model, LoadedModel) else model
    model_name = model.name if isinstance(model, LoadedModel) else None
    candidates = resolve_methods(names, pm) if names else list(registry.methods(pm).values())
    layer_problem = None
    if any(m.uses_layer for m in candidates):
        try:
            resolve_layer(module, layer, example, model_name, pm)
        except XvizError as exc:
            layer_problem = str(exc)
    ok, why = [], {}
    for m in candidates:
        try:
            if m.uses_layer and layer_problem:
                raise XvizError(layer_problem)
            m.check(module, pm)
        except XvizError as exc:
            why[m.name] = str(exc)
            continue
        ok.append(m)
    return ok, why


# --- results -------------------------------------------------------------------------------------

@dataclass
class MethodScores:
    """One method's averages over the images (``values``: column -> mean) and mean curves."""

    method: str
    values: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)  # "deletion"/"insertion" -> (steps + 1,) mean curve
    flagged: bool | None = None
    count: int = 0


@dataclass
class Results:
    """What :func:`evaluate` measured: one :class:`MethodScores` per method, ranked."""

    rows: list[MethodScores]
    rank_by: str
    settings: dict
    examples: dict = field(default_factory=dict, repr=False)  # a few images with original/randomised maps

    def columns(self) -> list[str]:
        present = {k for r in self.rows for k in r.values}
        return [c for c in COLUMNS if c in present]

    def __getitem__(self, method: str) -> MethodScores:
        for r in self.rows:
            if r.method == method:
                return r
        raise KeyError(method)

    def table(self) -> str:
        cols = self.columns()
        header = ["rank", "method", *[COLUMNS[c][0] + (" ^" if COLUMNS[c][1] else " v") for c in cols]]
        if "sanity_spearman" in cols:
            header.append("sanity")
        lines = []
        for i, r in enumerate(self.rows, 1):
            line = [str(i), r.method, *[_fmt(r.values.get(c)) for c in cols]]
            if "sanity_spearman" in cols:
                line.append("FLAGGED" if r.flagged else "ok")
            lines.append(line)
        widths = [max(len(x) for x in col) for col in zip(header, *lines)]
        fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
        return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, lines)])

    def write_csv(self, path) -> Path:
        from xviz.render import atomic_write

        cols = self.columns()

        def write(tmp):
            with open(tmp, "w", newline="") as fh:
                out = csv.writer(fh)
                out.writerow(["rank", "method", *cols, "sanity_flagged", "images"])
                for i, r in enumerate(self.rows, 1):
                    flag = "" if r.flagged is None else int(r.flagged)
                    out.writerow([i, r.method, *[_fmt(r.values.get(c), 6) for c in cols], flag, r.count])
        return atomic_write(path, write)

    def write_settings(self, path) -> Path:
        from xviz.render import atomic_write

        data = dict(self.settings, rank_by=self.rank_by,
                    results={r.method: dict(r.values, flagged=r.flagged, images=r.count) for r in self.rows})
        return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))

    def bar_chart(self, path, title: str = "") -> Path:
        """One panel per metric, one bar per method (in ranking order); flagged methods hatched."""
        import matplotlib.pyplot as plt

        cols = self.columns()
        ncols = min(4, len(cols))
        nrows = math.ceil(len(cols) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 0.6 + (0.9 + 0.28 * len(self.rows)) * nrows),
                                 squeeze=False)
        names = [r.method for r in self.rows]
        colors = plt.get_cmap("tab10")
        for ax, col in zip(axes.flat, cols):
            values = [r.values.get(col, float("nan")) for r in self.rows]
            bars = ax.barh(range(len(names)), values, color=[colors(i % 10) for i in range(len(names))])
            for bar, r in zip(bars, self.rows):
                if r.flagged:
                    bar.set_hatch("//")
                    bar.set_edgecolor("black")
            ax.set_yticks(range(len(names)), names, fontsize=8)
            ax.invert_yaxis()
            heading, higher = COLUMNS[col]
            ax.set_title(f"{heading} ({'higher' if higher else 'lower'} is better)", fontsize=9)
            ax.tick_params(axis="x", labelsize=7)
            ax.grid(axis="x", alpha=0.3)
        for ax in list(axes.flat)[len(cols):]:
            ax.axis("off")
        fig.suptitle(title or f"ranked by {self.rank_by}; hatched: flagged by the randomisation check", fontsize=10)
        fig.tight_layout()
        from xviz.render import save_png

        return save_png(fig, path)

    def sanity_figure(self, path, title: str = "") -> Path:
        """A few images; per method (in ranking order) its map of the trained model and of the model with
        randomised top layers, with their Spearman correlation."""
        import matplotlib.pyplot as plt

        from xviz.render import overlay, save_png

        ex = self.examples
        if not ex.get("maps"):
            raise XvizError("no sanity-check maps to draw: evaluate with the `sanity` metric")
        methods = [r.method for r in self.rows if r.method in ex["maps"]]
        n, cols = len(ex["images"]), 1 + 2 * len(methods)
        fig, axes = plt.subplots(n, cols, figsize=(1.45 * cols, 1.55 * n + 0.5), squeeze=False)
        for i, image in enumerate(ex["images"]):
            axes[i, 0].imshow(image)
            axes[i, 0].set_title(ex["labels"][i], fontsize=7)
            for j, m in enumerate(methods):
                trained, randomised = ex["maps"][m][0][i], ex["maps"][m][1][i]
                rho = spearman(np.abs(trained[None]) if ex["signed"][m] else trained[None],
                               np.abs(randomised[None]) if ex["signed"][m] else randomised[None])[0]
                for c, (heat, what) in enumerate(((trained, m), (randomised, f"randomised, rho {rho:.2f}"))):
                    ax = axes[i, 1 + 2 * j + c]
                    ax.imshow(overlay(image, heat, 0.5, "jet", ex["signed"][m]))
                    ax.set_title(what, fontsize=6.5)
        for ax in axes.flat:
            ax.axis("off")
        fig.suptitle(title or "model-randomisation check: each method's map, trained vs randomised top layers",
                     fontsize=9)
        fig.tight_layout()
        return save_png(fig, path)

    def curves_chart(self, path, title: str = "") -> Path:
        """Mean deletion and insertion curves of each method."""
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        for ax, kind in zip(axes, ("deletion", "insertion")):
            for i, r in enumerate(self.rows):
                if kind in r.curves:
                    y = r.curves[kind]
                    ax.plot(np.linspace(0, 1, len(y)), y, label=f"{r.method} ({r.values[kind]:.3f})",
                            linestyle="--" if r.method == RANDOM else "-", color=plt.get_cmap("tab10")(i % 10))
            ax.set_xlabel(f"fraction of pixels {'removed' if kind == 'deletion' else 'inserted'}")
            ax.set_ylabel("probability of the explained class")
            ax.set_title(f"{kind} (AUC in the legend; {'lower' if kind == 'deletion' else 'higher'} is better)",
                         fontsize=9)
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        from xviz.render import save_png

        return save_png(fig, path)


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}f}"


# --- the evaluation ------------------------------------------------------------------------------

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


def check_metrics(metrics: Sequence[str] | None, dataset, dataset_name: str = "the dataset") -> list[str]:
    """The metrics to compute (default: all that apply), or an error naming those that apply."""
    has_regions = bool(region_kinds(dataset))
    applicable = [m for m in METRICS if m != "pointing" or has_regions]
    if not metrics:
        return applicable
    for m in metrics:
        if m not in METRICS:
            raise XvizError(f"unknown metric `{m}`: choose from {', '.join(METRICS)}")
        if m not in applicable:
            raise XvizError(f"metric `{m}` needs object masks or boxes, which {dataset_name} does not have; "
                            f"metrics that apply: {', '.join(applicable)}")
    return list(dict.fromkeys(metrics))


def evaluate(model: LoadedModel | nn.Module, methods: Sequence[str | Method] | None, dataset, *,
             metrics: Sequence[str] | None = None, limit: int | None = None, batch_size: int = 32,
             steps: int = 20, baseline: str = "blur", blur_sigma: float | None = None, randomize: int = 3,
             flag_above: float = 0.5, layer: str | None = None, rank_by: str | None = None,
             reference: bool = True, chunk: int = 256, seed: int = 0, mean=None, std=None, pm=None,
             progress: bool = True, dataset_name: str = "the dataset", show_examples: int = 4) -> Results:
    """Measure each method's faithfulness on ``dataset`` (items ``(normalised image, label)``;
    ``masks(i)`` or ``box(i)`` enable the pointing games). See the module docstring for the metrics.

    ``methods``: names or Method objects (``None``: every registered method that applies);
    ``limit``: that many images, evenly spaced over the dataset; ``steps``: points of the
    deletion/insertion curves; ``baseline``: what removed pixels become (``blur``, ``mean``,
    ``black``, ``zero``); ``randomize``: how many top weight layers the sanity check re-initialises;
    ``reference``: add the ``random`` map row; ``show_examples``: images kept for
    :meth:`Results.sanity_figure`; ``rank_by``: a column of :data:`COLUMNS` (default
    ``ins_minus_del``, insertion minus deletion AUC). ``mean``/``std``: the normalisation of a bare
    module's inputs (a LoadedModel brings its own), used for black pixels.
    """
    from tqdm import tqdm

    pm = pm or registry.default_plugin_manager()
    loaded = model if isinstance(model, LoadedModel) else None
    module = loaded.module if loaded else model
    pre = loaded.preprocessing if loaded else None
    mean = torch.tensor(mean if mean is not None else (pre.mean if pre else (0.0, 0.0, 0.0)), dtype=torch.float32)
    std = torch.tensor(std if std is not None else (pre.std if pre else (1.0, 1.0, 1.0)), dtype=torch.float32)
    black = -mean / std
    chosen = check_metrics(metrics, dataset, dataset_name)
    if steps < 2:
        raise XvizError(f"`--steps {steps}` must be at least 2")
    if batch_size < 1:
        raise XvizError(f"`--batch-size {batch_size}` must be at least 1")
    if baseline not in BASELINES:
        raise XvizError(f"unknown baseline `{baseline}`: use {', '.join(BASELINES)}")
    n_total = len(dataset)
    if n_total == 0:
        raise XvizError(f"{dataset_name} holds no images")
    n = n_total if limit is None else min(int(limit), n_total)
    if n < 1:
        raise XvizError(f"`--limit {limit}` must be at least 1")
    indices = np.unique(np.round(np.linspace(0, n_total - 1, n)).astype(int)) if n < n_total else np.arange(n_total)
    device = next((p.device for p in module.parameters()), torch.device("cpu"))

    example = dataset[int(indices[0])][0][None].to(device)
    names = None if methods is None else [m.name if isinstance(m, Method) else m for m in methods]
    if methods is None:
        use, skipped = applicable_methods(model, example, None, layer, pm)
    else:
        use, skipped = applicable_methods(model, example, list(methods), layer, pm)
        if skipped:
            every, _ = applicable_methods(model, example, None, layer, pm)
            bad = next(iter(skipped))
            raise XvizError(f"method `{bad}` does not apply to this model ({skipped[bad].rstrip('.')}); methods that "
                            f"apply: {', '.join(m.name for m in every) or 'none'}")
    if not use:
        raise XvizError("no registered method applies to this model (`xviz methods` lists them)")
    if reference and RANDOM not in {m.name for m in use}:
        use = [*use, RandomMap()]
    layer_name = None
    if any(m.uses_layer for m in use):
        layer_name, _ = resolve_layer(module, layer, example, loaded.name if loaded else None, pm)

    randomized, randomized_layers = (None, [])
    if "sanity" in chosen:
        randomized, randomized_layers = randomized_copy(module, randomize, seed)

    sums: dict[str, dict[str, float]] = {}
    curve_sums: dict[str, dict[str, torch.Tensor]] = {}
    counts: dict[str, int] = {}
    signed: dict[str, bool] = {}
    size = tuple(example.shape[-2:])
    examples: dict = {"images": [], "labels": [], "maps": {}, "signed": {}}
    started = time.perf_counter()
    bar = tqdm(total=len(indices), unit="img", desc="evaluating", disable=not progress, file=sys.stderr)
    with preserved_state(module):
        scorer = scoring_model(module) if any(m in chosen for m in ("deletion", "insertion", "drop")) else module
        for start in range(0, len(indices), batch_size):
            idx = [int(i) for i in indices[start:start + batch_size]]
            x = torch.stack([dataset[i][0] for i in idx]).to(device)
            exps = explain_tensors(model, x, use, layer=layer_name, pm=pm)
            targets = torch.as_tensor(exps[0].targets[:, 0], device=device)
            full = class_probability(scorer, x, targets, chunk)
            base = make_baseline(x, baseline, black, blur_sigma)
            empty = class_probability(scorer, base, targets, chunk)
            regions = {}
            if "pointing" in chosen:
                per_image = [regions_of(dataset, i, pre, size) for i in idx]
                regions = {k: torch.from_numpy(np.stack([r[k] for r in per_image])) for k in per_image[0]}
            rand_maps = _randomized_maps(randomized, x, targets, use, layer_name, pm) if randomized is not None else {}
            show = _pick_examples(targets.tolist(), show_examples - len(examples["images"])) if rand_maps else []
            if show:
                pixels = (x[show].float().cpu() * std[:, None, None] + mean[:, None, None]).clamp(0, 1)
                examples["images"] += list((pixels.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8))
                names = loaded.class_names if loaded else []
                examples["labels"] += [f"explaining {names[t] if t < len(names) else t}"
                                       for t in targets[show].tolist()]
            for exp in exps:
                key = exp.method if exp.layer is None or sum(e.method == exp.method for e in exps) == 1 \
                    else f"{exp.method}:{exp.layer}"
                maps = torch.from_numpy(exp.maps[:, 0])
                signed[key] = exp.signed
                acc = sums.setdefault(key, {})
                add = lambda name, v: acc.__setitem__(name, acc.get(name, 0.0) + float(v))  # noqa: E731
                if "deletion" in chosen or "insertion" in chosen:
                    curves = perturbation_curves(scorer, x, base, maps.to(device), targets, steps, chunk, seed,
                                                 full, empty)
                    for kind in ("deletion", "insertion"):
                        if kind in chosen:
                            add(kind, auc(curves[kind]).sum())
                            c = curve_sums.setdefault(key, {})
                            c[kind] = c.get(kind, 0) + curves[kind].sum(0).cpu()
                if "drop" in chosen:
                    masked = class_probability(scorer, mask_by_map(x, maps.to(device), black), targets, chunk)
                    drop, increase = average_drop_increase(full.cpu(), masked.cpu())
                    add("average_drop", drop * len(idx))
                    add("increase", increase * len(idx))
                for kind, region in regions.items():
                    add(f"pointing_{kind}", pointing_game(maps, region).double().sum())
                    add(f"energy_{kind}", energy_pointing(maps, region).sum())
                if rand_maps:
                    other = rand_maps[(exp.method, exp.layer)]
                    a, b = exp.maps[:, 0], other
                    if exp.signed:
                        a, b = np.abs(a), np.abs(b)
                    add("sanity_spearman", spearman(a, b).sum())
                    add("sanity_ssim", ssim(a, b, 1.0).sum())
                    if show:
                        kept = examples["maps"].setdefault(key, ([], []))
                        kept[0].extend(exp.maps[show, 0])
                        kept[1].extend(other[show])
                        examples["signed"][key] = exp.signed
                counts[key] = counts.get(key, 0) + len(idx)
            bar.update(len(idx))
    bar.close()
    seconds = time.perf_counter() - started

    rows = []
    for key, acc in sums.items():
        k = counts[key]
        values = {name: v / k for name, v in acc.items()}
        if "deletion" in values and "insertion" in values:
            values["ins_minus_del"] = values["insertion"] - values["deletion"]
        flagged = None
        if "sanity_spearman" in values:
            flagged = bool(values["sanity_spearman"] >= flag_above)
        rows.append(MethodScores(key, values, {c: (v / k).numpy() for c, v in curve_sums.get(key, {}).items()},
                                 flagged, k))
    criterion = rank_by or next((c for c in ("ins_minus_del", "deletion", "insertion", "average_drop",
                                             "energy_object", "energy_box", "sanity_spearman")
                                 if all(c in r.values for r in rows)), None)
    if criterion not in COLUMNS or not all(criterion in r.values for r in rows):
        raise XvizError(f"cannot rank by `{criterion}`: choose one of "
                        f"{', '.join(c for c in COLUMNS if all(c in r.values for r in rows))}")
    higher = COLUMNS[criterion][1]
    rows.sort(key=lambda r: -r.values[criterion] if higher else r.values[criterion])
    settings = {
        "model": loaded.name if loaded else type(module).__name__,
        "model_source": _relative(loaded.source) if loaded else "",
        "dataset": dataset_name,
        "images": int(len(indices)),
        "explained": "the predicted class of each image",
        "layer": layer_name,
        "metrics": chosen,
        "steps": steps,
        "baseline": baseline,
        "blur_sigma": (blur_sigma or max(size) / 16) if baseline == "blur" else None,
        "randomized_layers": randomized_layers,
        "flag_above": flag_above,
        "seed": seed,
        "skipped_methods": skipped if methods is None else {},
        "seconds": round(seconds, 1),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    from xviz.explanation import library_versions

    settings["versions"] = library_versions()
    return Results(rows, criterion, settings, examples)


def _pick_examples(targets: list[int], count: int) -> list[int]:
    """Up to ``count`` positions, one per explained class first, then the rest in order."""
    if count <= 0:
        return []
    first = list({t: i for i, t in reversed(list(enumerate(targets)))}.values())[::-1]
    order = sorted(first) + [i for i in range(len(targets)) if i not in first]
    return order[:count]


def _relative(source: str) -> str:
    """A path under the current folder as a relative one (settings files travel between machines)."""
    try:
        return str(Path(source).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return source


def _randomized_maps(randomized: nn.Module, x: torch.Tensor, targets: torch.Tensor, methods, layer, pm) -> dict:
    """Maps of the randomised model for the same images and classes: ``{(method, layer): (N, H, W)}``
    (one explain pass per distinct class in the batch, all methods together)."""
    out: dict = {}
    for c in torch.unique(targets).tolist():
        where = (targets == c).nonzero()[:, 0]
        for exp in explain_tensors(randomized, x[where], methods, layer=layer, target=int(c), pm=pm):
            key = (exp.method, exp.layer)
            if key not in out:
                out[key] = np.zeros((x.shape[0], *exp.maps.shape[-2:]), np.float32)
            out[key][where.cpu().numpy()] = exp.maps[:, 0]
    return out


# --- the command ---------------------------------------------------------------------------------

EXAMPLES = """examples:
  xviz evaluate --model xviz-demo --data synthetic --limit 120 --out eval-demo
  xviz evaluate --model xviz-demo --data synthetic --method gradcam,gradcampp --metrics deletion,insertion --out e
  xviz evaluate --checkpoint runs/cub/best.pt --data cub200 --root ~/data --limit 200 --out eval-cub
  xviz evaluate --model xviz-demo --data plugins/xviz_zoo/assets/samples --out eval-folder   (no pointing game)
"""


def add_parser(subparsers) -> None:
    import argparse

    p = subparsers.add_parser("evaluate", help="measure how faithful explanation methods are (deletion/insertion, "
                              "average drop, pointing game, randomisation check)", epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="registered model name (see `xviz models`)")
    p.add_argument("--checkpoint", help="an xviz checkpoint (overrides --model)")
    p.add_argument("--weights", default="DEFAULT", help="DEFAULT (pretrained), none (random) or a weights PATH")
    p.add_argument("--method", action="append", help="method(s), comma-separated or repeated "
                   "(default: every registered method that applies to the model)")
    p.add_argument("--data", required=True, metavar="DATASET|FOLDER", help="a registered dataset or a folder of images")
    p.add_argument("--root", help="where the dataset lies (default: the dataset's own place)")
    p.add_argument("--split", default="test", help="dataset split (default: test)")
    p.add_argument("--limit", type=int, help="evaluate N images, evenly spaced over the split (default: all)")
    p.add_argument("--metrics", help=f"comma-separated, from {', '.join(METRICS)} (default: all that apply)")
    p.add_argument("--steps", type=int, default=20, help="points of the deletion/insertion curves (default: 20)")
    p.add_argument("--baseline", default="blur", choices=BASELINES,
                   help="what removed pixels become (default: blur, Gaussian with sigma = side / 16)")
    p.add_argument("--randomize", type=int, default=3,
                   help="how many top conv/linear layers the sanity check re-initialises (default: 3)")
    p.add_argument("--layer", help="target layer of the layer methods (default: the model's)")
    p.add_argument("--rank-by", help=f"column to rank by (default: ins_minus_del); one of {', '.join(COLUMNS)}")
    p.add_argument("--no-reference", action="store_true", help="leave out the random-map reference row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="folder for evaluate_results.csv, evaluate_ranking.png, "
                   "evaluate_curves.png, evaluate_sanity.png, evaluate_settings.json")
    p.add_argument("--batch-size", type=int, default=32, help="images explained together (default: 32)")
    p.add_argument("--chunk", type=int, default=256, help="perturbed images per forward (default: 256)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=cmd_evaluate)


def _split(value) -> list[str]:
    values = value if isinstance(value, list) else [value]
    return [v.strip() for item in values if item for v in item.split(",") if v.strip()]


def load_data(name: str, model: LoadedModel, split: str = "test", root=None, pm=None):
    """``(dataset, description)`` for a registered dataset name or a folder of images, preprocessed
    as the model expects."""
    specs = registry.datasets(pm or registry.default_plugin_manager())
    if name in specs:
        return specs[name].build(split, root=root, transform=model.preprocessing.tensor), f"`{name}` ({split})"
    if Path(name).is_dir():
        return ImageFolder(name, model.preprocessing), f"folder `{name}`"
    try:
        registry.lookup(specs, name, "dataset", "xviz datasets")
    except XvizError as exc:
        raise XvizError(f"{exc}; --data also takes a folder of images") from None


def cmd_evaluate(args) -> int:
    from xviz.cli import writable_folder
    from xviz.models import load_model, torch_device

    device = torch_device(args.device)
    metrics = _split(args.metrics) if args.metrics else None
    for m in metrics or ():
        if m not in METRICS:
            raise XvizError(f"unknown metric `{m}`: choose from {', '.join(METRICS)}")
    names = _split(args.method) if args.method else None
    if names:
        resolve_methods(names, args.pm)  # unknown names fail before the model loads
    if args.rank_by and args.rank_by not in COLUMNS:
        raise XvizError(f"unknown column `{args.rank_by}` for --rank-by: choose one of {', '.join(COLUMNS)}")
    out = writable_folder(args.out)
    model = load_model(args.model, weights=args.weights, checkpoint=args.checkpoint, pm=args.pm).to(device)
    dataset, described = load_data(args.data, model, args.split, args.root, args.pm)
    check_metrics(metrics, dataset, described)
    if names is None and len(dataset):
        _, skipped = applicable_methods(model, dataset[0][0][None].to(device), None, args.layer, args.pm)
        for name, why in skipped.items():
            print(f"skipped `{name}`: {why}", file=sys.stderr)
    results = evaluate(model, names, dataset, metrics=metrics, limit=args.limit, batch_size=args.batch_size,
                       steps=args.steps, baseline=args.baseline, randomize=args.randomize, layer=args.layer,
                       rank_by=args.rank_by, reference=not args.no_reference, chunk=args.chunk, seed=args.seed,
                       pm=args.pm, dataset_name=described)
    s = results.settings
    print(f"{model.name} on {described}, {s['images']} images, the predicted class explained; "
          f"ranked by {COLUMNS[results.rank_by][0]} ({'higher' if COLUMNS[results.rank_by][1] else 'lower'} is better)")
    print(results.table())
    notes = [f"deletion/insertion: {s['steps']} steps, baseline {s['baseline']}"
             + (f" (sigma {s['blur_sigma']:.1f} px)" if s["blur_sigma"] else "")] if "deletion" in s["metrics"] \
        or "insertion" in s["metrics"] else []
    if s["randomized_layers"]:
        notes.append(f"randomised: {', '.join(s['randomized_layers'])}; FLAGGED when rand. spearman >= {s['flag_above']}")
    if notes:
        print("; ".join(notes))
    title = f"{model.name} on {described}, {s['images']} images"
    written = [results.write_csv(out / "evaluate_results.csv"),
               results.bar_chart(out / "evaluate_ranking.png",
                                 f"{title}; ranked by {COLUMNS[results.rank_by][0]}; hatched: flagged"),
               results.write_settings(out / "evaluate_settings.json")]
    if any("deletion" in r.curves or "insertion" in r.curves for r in results.rows):
        written.append(results.curves_chart(out / "evaluate_curves.png", title))
    if results.examples.get("maps"):
        written.append(results.sanity_figure(out / "evaluate_sanity.png", f"{title}: maps of the trained model vs "
                                             f"randomised {', '.join(s['randomized_layers'])}"))
    print(f"wrote {', '.join(str(p) for p in written)} in {s['seconds']:.0f} s")
    return 0
