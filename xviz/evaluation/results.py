"""What an evaluation measured: per-method scores, ranked; the table, CSV, settings JSON and charts."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xviz.console import table
from xviz.errors import XvizError
from xviz.evaluation.metrics import spearman
from xviz.evaluation.names import COLUMNS, RANDOM


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
        return table(*reversed(self.ranking()))

    def ranking(self) -> tuple[list[str], list[list[str]]]:
        """The ranking as text cells: ``(header, lines)``, best first."""
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
        return header, lines

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

    def sanity_figure(self, path, title: str = "", images: int = 3) -> Path:
        """A few images (the top row); below, one row per method (in ranking order): for each image its map
        of the trained model and of the model with randomised top layers, with their Spearman correlation.
        At most ``images`` images, two columns each: legible at a page's width however many methods."""
        import matplotlib.pyplot as plt

        from xviz.render import overlay, save_png

        ex = self.examples
        if not ex.get("maps"):
            raise XvizError("no sanity-check maps to draw: evaluate with the `sanity` metric")
        methods = [r.method for r in self.rows if r.method in ex["maps"]]
        n = min(images, len(ex["images"]))
        fig, axes = plt.subplots(1 + len(methods), 2 * n, figsize=(1.0 * 2 * n + 0.9, 1.08 * (1 + len(methods)) + 0.5),
                                 squeeze=False)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.spines[:].set_visible(False)
        for i, image in enumerate(ex["images"][:n]):
            axes[0, 2 * i].imshow(image)
            axes[0, 2 * i].set_title(ex["labels"][i], fontsize=9)
            axes[0, 2 * i + 1].text(0.05, 0.5, "left: trained\nright: randomised\n(rho: Spearman)", fontsize=7.5,
                                    va="center", transform=axes[0, 2 * i + 1].transAxes)
            for j, m in enumerate(methods, 1):
                trained, randomised = ex["maps"][m][0][i], ex["maps"][m][1][i]
                rho = spearman(np.abs(trained[None]) if ex["signed"][m] else trained[None],
                               np.abs(randomised[None]) if ex["signed"][m] else randomised[None])[0]
                axes[j, 2 * i].imshow(overlay(image, trained, 0.5, None, ex["signed"][m]))
                axes[j, 2 * i + 1].imshow(overlay(image, randomised, 0.5, None, ex["signed"][m]))
                axes[j, 2 * i + 1].set_title(f"rho {rho:.2f}", fontsize=8.5, pad=2)
        for j, m in enumerate(methods, 1):
            axes[j, 0].set_ylabel(m, fontsize=9.5, rotation=0, ha="right", va="center")
        fig.suptitle(title or "model-randomisation check: trained vs randomised top layers", fontsize=11)
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
    """``digits`` decimals; a value too small for them (infidelity is often ~1e-6) in scientific notation."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if value != 0 and abs(value) < 10 ** -digits:
        return f"{value:.{max(digits - 1, 1)}e}"
    return f"{value:.{digits}f}"
