"""Writing explanations to files, one way for :meth:`xviz.explanation.Explanation.save` and ``xviz explain``:
overlays, panels, per-layer figures, grids and raw arrays, each written atomically, named by
:func:`output_name`.

``xviz explain`` encodes its files off the compute thread: :class:`BackgroundWrites` runs a batch's
writes on a small thread pool (PNG compression and JPEG encoding release the GIL) while the model works
on the next batch; at most a few batches wait, and their results come back in input order.

A run interrupted mid-write leaves no partial file: each write goes to a hidden temporary that is
renamed into place (:func:`xviz.render.atomic_write`). Temporaries a killed run left behind are
removed by :func:`remove_temporaries`, which ``xviz explain`` calls at its start and when interrupted.
"""

from __future__ import annotations

import errno
import re
import threading
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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


FORMATS = ("png", "jpg")


def save_picture(picture: np.ndarray, path: Path, image_format: str = "png") -> Path:
    """Write an RGB array as ``path`` with the suffix of ``image_format``: PNG at compression level 1
    (a fifth of level 6's time for about 15 % more bytes) or JPEG at quality 90."""
    if image_format == "jpg":
        from PIL import Image

        return atomic_write(path.with_suffix(".jpg"),
                            lambda tmp: Image.fromarray(picture).save(tmp, format="JPEG", quality=90))
    return save_png(picture, path.with_suffix(".png"), compress_level=1)


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


@dataclass
class Written:
    """What writing one batch produced, collected in input order by :meth:`OverlayWriter.collect`: the
    table ``rows``, the report ``records`` and the ``gallery`` entries ``(method, view, map, title, signed)``."""

    rows: list = field(default_factory=list)
    records: list = field(default_factory=list)
    gallery: list = field(default_factory=list)


class OverlayWriter:
    """What ``xviz explain`` writes per image: an overlay per method and target (enlarged to 224 px,
    PNG or JPEG: ``image_format``), optionally a panel (image | heatmap | overlay), a figure of all layers
    for a method that explains several, the raw maps (``.npy``); and at the end one grid per method.

    :meth:`batch` may run on writer threads (it changes nothing shared but the ``overlays`` counter,
    under a lock); :meth:`collect`, called in input order, gathers the table lines (``rows``), the
    report's records and the grids' pictures."""

    def __init__(self, folder: Path, alpha: float = 0.5, cmap: str | None = None, panels: bool = False,
                 grids: bool = False, raw: bool = False, image_format: str = "png", colorbar: bool = False):
        self.folder, self.alpha, self.cmap = Path(folder), alpha, cmap  # None: jet, or bwr for signed maps
        self.colorbar = colorbar  # overlays get a colour scale on their right
        self.panels, self.grids, self.raw, self.image_format = panels, grids, raw, image_format
        self.overlays = 0  # written so far, by any thread
        self.rows: list[list[str]] = []
        self.records: list[dict] = []  # one per image, for the report page (xviz.report.append_records)
        self._gallery: dict[str, tuple[list, list, list, bool]] = {}  # method -> views, maps, titles, signed
        self._lock = threading.Lock()

    def batch(self, names, stems, shown, views, explanations) -> Written:
        """Write everything for the images of one batch (``views``: each image as the model saw it)."""
        written = Written()
        for i, view in enumerate(views):
            self._image(i, stems[i], shown[i], view, explanations, written)
        return written

    def collect(self, written: Written) -> None:
        """Add one batch's table lines, records and grid pictures (call in input order)."""
        self.rows.extend(written.rows)
        self.records.extend(written.records)
        for method, view, heat, title, signed in written.gallery:
            views, heats, titles, _ = self._gallery.setdefault(method, ([], [], [], signed))
            views.append(view)
            heats.append(heat)
            titles.append(title)

    def uses_pyplot(self, explanations) -> bool:
        """Whether writing these explanations draws matplotlib figures (panels, per-layer figures), which
        pyplot does not allow on several threads at once."""
        return self.panels or len({e.method for e in explanations}) < len(explanations)

    def _image(self, i: int, stem: str, shown: str, view, explanations, written: Written) -> None:
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
                record["outputs"].append(self._target(i, k, stem, shown, view, exp, exp.layer if layered else None,
                                                      written))
        written.records.append(record)

    def _layers(self, i, stem, view, method, layered) -> None:
        title = f"{method}: predicted {layered[0].prediction_names[i]} ({layered[0].prediction_scores[i]:.1%})"
        figure = layers_figure(view, [e.maps[i, 0] for e in layered], [e.layer for e in layered], title,
                               self.alpha, self.cmap)
        save_png(figure, self.folder / f"{stem}_{method}_layers.png")

    def _target(self, i, k, stem, shown, view, exp, layer, written: Written) -> dict:
        target_name = exp.target_names[i][k]
        base = self.folder / output_name(stem, exp.method, k, exp.topk, target_name, layer)
        heat = exp.maps[i, k]
        picture = enlarge(overlay(view, heat, self.alpha, self.cmap, exp.signed))
        picture = with_colorbar(picture, self.cmap, exp.signed) if self.colorbar else picture
        path = save_picture(picture, Path(f"{base}.png"), self.image_format)
        with self._lock:
            self.overlays += 1
        output = {"method": exp.method, "layer": exp.layer, "per_layer": layer is not None, "target": target_name,
                  "prob": float(exp.scores[i, k]), "rank": k + 1, "overlay": path.name, "panel": None}
        if self.panels:
            title = (f"{exp.method}: predicted {exp.prediction_names[i]} ({exp.prediction_scores[i]:.1%})"
                     f", explaining {target_name}")
            output["panel"] = save_png(panel(view, heat, title, self.alpha, self.cmap, exp.signed), f"{base}_panel.png").name
        if self.grids:
            written.gallery.append((exp.method, view, heat, f"{Path(shown).name}\n{target_name} ({exp.scores[i, k]:.0%})",
                                    exp.signed))
        if self.raw:
            save_npy(exp.raw[i, k], Path(f"{base}_raw.npy"))
        written.rows.append([shown, exp.prediction_names[i], f"{exp.prediction_scores[i]:.3f}",
                             f"{target_name} ({exp.scores[i, k]:.3f})", exp.method, str(path)])
        return output

    def take_records(self) -> list[dict]:
        """The image records collected since the last call (for :func:`xviz.report.append_records`)."""
        records, self.records = self.records, []
        return records

    def write_grids(self, columns: int = 3) -> list[tuple[Path, int]]:
        """One grid of all overlays per method: ``[(path, overlays in it)]``."""
        out = []
        for method, (views, heats, titles, signed) in self._gallery.items():
            figure = grid(views, heats, titles, columns, self.alpha, self.cmap, signed)
            out.append((save_png(figure, self.folder / f"grid_{method}.png"), len(views)))
        return out


class BackgroundWrites:
    """Run write jobs on ``threads`` threads, at most ``pending`` of them submitted and not yet handed back
    (so memory stays flat however many batches come); results come back in submission order. On leaving
    with an error (a failed write, Ctrl-C), jobs not started are cancelled and running ones finish,
    each file written whole or not at all (:func:`xviz.render.atomic_write`)."""

    def __init__(self, threads: int = 2, pending: int = 3):
        self.threads, self.pending = max(1, threads), max(1, pending)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="xviz-writer")
        self._queue: deque = deque()

    def submit(self, job, *args) -> list:
        """Queue ``job(*args)``; returns the results of the earliest jobs that are finished (waiting for the
        oldest while ``pending`` jobs are outstanding). A job's exception is raised here."""
        self._queue.append(self._pool.submit(job, *args))
        done = []
        while self._queue and (len(self._queue) > self.pending or self._queue[0].done()):
            done.append(self._queue.popleft().result())
        return done

    def finish(self) -> list:
        """Wait for every job; their results in submission order."""
        done = []
        while self._queue:
            done.append(self._queue.popleft().result())
        return done

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
