"""Where each attention layer looks, in numbers, on a dataset whose part masks are known.

For every map (upsampled to the input and scaled to sum to one) and every mask: the *mass* is the
share of the map inside the mask; the *pointing game* hits when the map's maximum lies inside the
object. A map is *degenerate* when it is blank (max - min below 1e-6 of its magnitude) or nearly
uniform (normalised entropy above 0.98): the documents' first attention block came out that way.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from xviz.console import table as console_table
from xviz.errors import XvizError
from xviz.explainer import explain_tensors
from xviz.render import atomic_write, save_png

REGIONS = ("part", "head", "body", "background")


@dataclass
class Row:
    """Averages over the images for one attention layer (or one CAM method)."""

    source: str
    mass: dict = field(default_factory=dict)  # region -> mean share of the map's mass
    pointing: float = 0.0  # share of images whose map maximum lies on the object
    degenerate: float = 0.0  # share of images whose map is blank or uniform
    count: int = 0


def _scores(heat: torch.Tensor, masks: dict) -> tuple[dict, bool, bool]:
    """Mass per region, pointing hit and degeneracy for one (H, W) map with non-negative values."""
    heat = heat.double().clamp_min(0)
    total = heat.sum()
    flat = heat.flatten()
    spread = flat.max() - flat.min()
    blank = bool(total <= 0 or spread <= 1e-6 * flat.abs().max())
    p = flat / total if total > 0 else torch.full_like(flat, 1 / flat.numel())
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum() / math.log(flat.numel()))
    degenerate = blank or entropy > 0.98
    background = ~masks["object"]
    regions = {"part": masks["part"], "head": masks["head"], "body": masks["body"], "background": background}
    mass = {name: float(p.view_as(heat)[torch.from_numpy(m)].sum()) for name, m in regions.items()}
    r, c = np.unravel_index(int(flat.argmax()), heat.shape)
    return mass, bool(masks["object"][r, c]) and not blank, degenerate


def part_attention(model, dataset, methods=("attention", "gradcam", "gradcampp"), batch_size: int = 50,
                   limit: int | None = None, pm=None) -> list[Row]:
    """Rows for each attention layer of ``model`` and each CAM method, over ``dataset`` (which must
    give ``masks(i)``: object, body, head, part)."""
    if not hasattr(dataset, "masks"):
        raise XvizError("this dataset has no part masks: the part-attention report needs one that has "
                        "(the synthetic dataset)")
    n = len(dataset) if limit is None else min(limit, len(dataset))
    rows: dict[str, Row] = {}
    for start in tqdm(range(0, n, batch_size), desc="part attention", unit="batch", leave=False):
        idx = range(start, min(start + batch_size, n))
        x = torch.stack([dataset[i][0] for i in idx])
        masks = [dataset.masks(i) for i in idx]
        for exp in explain_tensors(model, x, list(methods), pm=pm):
            key = f"{exp.method} {exp.layer}" if exp.method == "attention" else exp.method
            row = rows.setdefault(key, Row(key, {r: 0.0 for r in REGIONS}))
            raw = torch.from_numpy(exp.raw[:, :1])
            heat = F.interpolate(raw, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            for h, m in zip(heat, masks):
                mass, hit, degenerate = _scores(h, m)
                for region in REGIONS:
                    row.mass[region] += mass[region]
                row.pointing += hit
                row.degenerate += degenerate
                row.count += 1
    for row in rows.values():
        row.mass = {k: v / row.count for k, v in row.mass.items()}
        row.pointing /= row.count
        row.degenerate /= row.count
    return list(rows.values())


def area_shares(dataset, limit: int | None = None) -> dict:
    """The mean share of the image each region covers: what a uniform map would score."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    sums = {r: 0.0 for r in REGIONS}
    for i in range(n):
        m = dataset.masks(i)
        sums["part"] += m["part"].mean()
        sums["head"] += m["head"].mean()
        sums["body"] += m["body"].mean()
        sums["background"] += (~m["object"]).mean()
    return {k: v / n for k, v in sums.items()}


def table(rows: list[Row], area: dict) -> str:
    header = ["source", *[f"{r} mass" for r in REGIONS], "pointing", "degenerate"]
    lines = [[r.source, *[f"{r.mass[k]:.3f}" for k in REGIONS], f"{r.pointing:.3f}", f"{r.degenerate:.0%}"]
             for r in rows]
    lines.append(["(uniform map)", *[f"{area[k]:.3f}" for k in REGIONS], "", ""])
    return console_table(lines, header)


def write_csv(rows: list[Row], path) -> Path:
    def write(tmp):
        with open(tmp, "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["source", *[f"{r}_mass" for r in REGIONS], "pointing", "degenerate", "images"])
            for r in rows:
                out.writerow([r.source, *[f"{r.mass[k]:.6f}" for k in REGIONS], f"{r.pointing:.6f}",
                              f"{r.degenerate:.6f}", r.count])
    return atomic_write(path, write)


def bar_chart(rows: list[Row], area: dict, path, title: str = "") -> Path:
    """Grouped bars: the share of each source's map on each region, beside a uniform map's."""
    import matplotlib.pyplot as plt

    sources = [r.source for r in rows] + ["uniform map"]
    values = [[r.mass[k] for k in REGIONS] for r in rows] + [[area[k] for k in REGIONS]]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(sources), 3.8))
    width = 0.8 / len(REGIONS)
    for j, region in enumerate(REGIONS):
        ax.bar([i + j * width for i in range(len(sources))], [v[j] for v in values], width, label=region)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(sources))], sources, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("share of the map's mass")
    ax.set_ylim(0, 1.15)  # room for the legend above the bars
    ax.legend(fontsize=8, ncol=4, loc="upper center")
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)


def cmd_report(args) -> int:
    """``xviz attention-report``: the table, then part_attention.csv and .png in ``--out``."""
    from xviz.datasets import load_dataset
    from xviz.models import load_model

    model = load_model(checkpoint=args.checkpoint, pm=args.pm)
    data, _ = load_dataset(args.dataset, args.split, transform=model.preprocessing.tensor, pm=args.pm)
    rows = part_attention(model, data, pm=args.pm, limit=args.limit)
    area = area_shares(data, args.limit)
    print(table(rows, area))
    for row in rows:
        if row.degenerate > 0.5:
            print(f"{row.source}: degenerate (blank or uniform) on {row.degenerate:.0%} of the images")
    out = Path(args.out)
    print(f"wrote {write_csv(rows, out / 'part_attention.csv')} and "
          f"{bar_chart(rows, area, out / 'part_attention.png', f'where each layer looks ({args.dataset} {args.split})')}")
    return 0
