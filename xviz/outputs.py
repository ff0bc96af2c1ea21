"""Writing explanations to files, one way for :meth:`xviz.explanation.Explanation.save` and ``xviz explain``:
overlays, panels, per-layer figures, grids and raw arrays, each written atomically, named by
:func:`output_name`.

A run interrupted mid-write leaves no partial file: each write goes to a hidden temporary that is
renamed into place (:func:`xviz.render.atomic_write`). Temporaries a killed run left behind are
removed by :func:`remove_temporaries`, which ``xviz explain`` calls at its start and when interrupted.
"""

from __future__ import annotations

import errno
import re
from collections import Counter
from pathlib import Path

import numpy as np

from xviz.errors import XvizError
from xviz.render import (DEFAULT_CMAP, DEFAULT_SIGNED_CMAP, atomic_write, colorize, enlarge, grid, layers_figure,
                         overlay, panel, save_png, with_colorbar)

MAX_NAME_PART = 60  # characters of a class name kept in a file name
_SUFFIXES = "png|npy|jpg|json|js|html"  # what explain and its report write, each through atomic_write
_TEMPORARY = re.compile(rf"^\.(?P<name>.+\.({_SUFFIXES}))\.[a-z0-9_]{{8}}\.({_SUFFIXES})$")  # atomic_write's mkstemp names


def safe_name(text: str) -> str:
    """``text`` with characters unsafe in file names replaced by ``-``."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in text)


def output_stems(inputs) -> list[str]:
    """A distinct file-name stem per input: its stem; its folder's name and stem where two inputs
    share a stem; a counter beyond that; ``image<i>`` for unnamed inputs."""
    stems = [safe_name(Path(p).stem) if p else f"image{i}" for i, p in enumerate(inputs)]
    clash = Counter(stems)
    stems = [safe_name(f"{Path(p).parent.name}-{Path(p).stem}") if p and clash[s] > 1 else s
             for p, s in zip(inputs, stems)]
    seen: Counter = Counter()
    out = []
    for s in stems:
        seen[s] += 1
        out.append(s if seen[s] == 1 else f"{s}-{seen[s]}")
    return out


def output_name(stem: str, method: str, k: int, topk: int, target_name: str, layer: str | None = None) -> str:
    """``<stem>_<method>``, plus ``-<layer>`` for a method explaining several layers, plus
    ``_top<k>-<target>`` when several targets are explained (the class name cut to
    :data:`MAX_NAME_PART` characters)."""
    name = f"{stem}_{method}" + (f"-{safe_name(layer)}" if layer else "")
    return name + (f"_top{k + 1}-{safe_name(target_name)[:MAX_NAME_PART]}" if topk > 1 else "")


def save_npy(array: np.ndarray, path: Path) -> Path:
    return atomic_write(path, lambda tmp: np.save(tmp, np.asarray(array)))


def save_maps(exp, directory: str | Path, cmap: str | None = None, alpha: float = 0.5) -> list[Path]:
    """``<input>_<method>[_top<k>-<target>].png`` per image and target: the map over the image as the
    model saw it (``exp.images``), or the colormapped map alone when the images are not known; and
    ``<method>.npy`` holding ``exp.maps``; returns the paths written."""
    directory = Path(directory)
    cmap = cmap or (DEFAULT_SIGNED_CMAP if exp.signed else DEFAULT_CMAP)
    written = []
    inputs = [exp.inputs[i] if i < len(exp.inputs) else "" for i in range(len(exp))]
    images = getattr(exp, "images", ())
    for i, stem in enumerate(output_stems(inputs)):
        for k in range(exp.topk):
            name = output_name(stem, exp.method, k, exp.topk, exp.target_names[i][k])
            picture = overlay(images[i], exp.maps[i, k], alpha, cmap, exp.signed) if i < len(images) \
                else colorize(exp.maps[i, k], cmap, exp.signed)
            written.append(save_png(picture, directory / f"{name}.png"))
    written.append(save_npy(exp.maps, directory / f"{exp.method}.npy"))
    return written


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete the hidden partial files (``.<name>.png.<random>.png``) that an interrupted write left in
    ``folder``; returns them."""
    folder = Path(folder)
    found = [p for p in folder.iterdir() if _TEMPORARY.match(p.name) and p.is_file()] if folder.is_dir() else []
    for path in found:
        path.unlink(missing_ok=True)
    return found


def write_failure(exc: OSError, folder: Path, written: int) -> XvizError:
    """The one-line error for a write that failed, saying how many overlays were written before and
    what to do about this cause."""
    name = Path(exc.filename).name if getattr(exc, "filename", None) else ""
    temporary = _TEMPORARY.match(name)
    name = temporary["name"] if temporary else name  # the file being written, not its temporary
    if exc.errno == errno.ENAMETOOLONG:
        hint = (f"the file name `{name}` is too long for the file system: shorten the image's file name or "
                "explain fewer targets (--topk)")
    elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "the disk is full: free space or choose another --out"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "permission denied: choose another --out"
    else:
        hint = f"{exc.strerror or exc}: check the folder or choose another --out"
    return XvizError(f"could not write into `{folder}`: {hint}; {written} overlay(s) were written before")


class OverlayWriter:
    """What ``xviz explain`` writes per image: an overlay per method and target (enlarged to 224 px),
    optionally a panel (image | heatmap | overlay), a figure of all layers for a method that explains
    several, the raw maps (``.npy``); and at the end one grid per method. ``overlays`` counts the
    overlays written so far; :meth:`rows` the table lines."""

    def __init__(self, folder: Path, alpha: float = 0.5, cmap: str | None = None, panels: bool = False,
                 grids: bool = False, raw: bool = False, colorbar: bool = False):
        self.folder, self.alpha, self.cmap = Path(folder), alpha, cmap  # None: jet, or bwr for signed maps
        self.colorbar = colorbar  # overlays get a colour scale on their right
        self.panels, self.grids, self.raw = panels, grids, raw
        self.overlays = 0
        self.rows: list[list[str]] = []
        self.records: list[dict] = []  # one per image, for the report page (xviz.report.append_records)
        self._gallery: dict[str, tuple[list, list, list, bool]] = {}  # method -> views, maps, titles, signed

    def image(self, i: int, stem: str, shown: str, view, explanations) -> None:
        """Write everything for image ``i`` of a batch (``view``: the image as the model saw it)."""
        per_method = Counter(e.method for e in explanations)  # methods such as `attention` give one per layer
        for method in (m for m in per_method if per_method[m] > 1):
            self._layers(i, stem, view, method, [e for e in explanations if e.method == method])
        first = explanations[0]
        record = {"image": first.inputs[i] if i < len(first.inputs) else shown, "shown": shown,
                  "predicted": first.prediction_names[i], "prob": float(first.prediction_scores[i]), "outputs": []}
        record["path"] = str(Path(record["image"]).resolve())
        for exp in explanations:
            for k in range(exp.topk):
                layered = per_method[exp.method] > 1
                record["outputs"].append(self._target(i, k, stem, shown, view, exp, exp.layer if layered else None))
        self.records.append(record)

    def _layers(self, i, stem, view, method, layered) -> None:
        title = f"{method}: predicted {layered[0].prediction_names[i]} ({layered[0].prediction_scores[i]:.1%})"
        figure = layers_figure(view, [e.maps[i, 0] for e in layered], [e.layer for e in layered], title,
                               self.alpha, self.cmap)
        save_png(figure, self.folder / f"{stem}_{method}_layers.png")

    def _target(self, i, k, stem, shown, view, exp, layer) -> dict:
        target_name = exp.target_names[i][k]
        base = self.folder / output_name(stem, exp.method, k, exp.topk, target_name, layer)
        heat = exp.maps[i, k]
        picture = enlarge(overlay(view, heat, self.alpha, self.cmap, exp.signed))
        picture = with_colorbar(picture, self.cmap, exp.signed) if self.colorbar else picture
        written = save_png(picture, f"{base}.png")
        self.overlays += 1
        output = {"method": exp.method, "layer": exp.layer, "per_layer": layer is not None, "target": target_name,
                  "prob": float(exp.scores[i, k]), "rank": k + 1, "overlay": written.name, "panel": None}
        if self.panels:
            title = (f"{exp.method}: predicted {exp.prediction_names[i]} ({exp.prediction_scores[i]:.1%})"
                     f", explaining {target_name}")
            output["panel"] = save_png(panel(view, heat, title, self.alpha, self.cmap, exp.signed), f"{base}_panel.png").name
        if self.grids:
            views, heats, titles, _ = self._gallery.setdefault(exp.method, ([], [], [], exp.signed))
            views.append(view)
            heats.append(heat)
            titles.append(f"{Path(shown).name}\n{target_name} ({exp.scores[i, k]:.0%})")
        if self.raw:
            save_npy(exp.raw[i, k], Path(f"{base}_raw.npy"))
        self.rows.append([shown, exp.prediction_names[i], f"{exp.prediction_scores[i]:.3f}",
                          f"{target_name} ({exp.scores[i, k]:.3f})", exp.method, str(written)])
        return output

    def take_records(self) -> list[dict]:
        """The image records written since the last call (for :func:`xviz.report.append_records`)."""
        records, self.records = self.records, []
        return records

    def write_grids(self, columns: int = 3) -> list[tuple[Path, int]]:
        """One grid of all overlays per method: ``[(path, overlays in it)]``."""
        out = []
        for method, (views, heats, titles, signed) in self._gallery.items():
            figure = grid(views, heats, titles, columns, self.alpha, self.cmap, signed)
            out.append((save_png(figure, self.folder / f"grid_{method}.png"), len(views)))
        return out
