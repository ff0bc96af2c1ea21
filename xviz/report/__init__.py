"""The report page: every image of an output folder, every method, side by side, in the browser.

An explain run appends one JSON line per image to ``<out>/xviz-results.jsonl`` (:func:`append_records`)
and writes its settings to ``<out>/xviz-settings.json``; :func:`build_report` turns the folder into

* ``<out>/index.html``: a static page (no server, no network) that opens from ``file://``;
* ``<out>/report/data.js``: the rows as data (``window.XVIZ_REPORT = {...}``), so the page itself stays
  the same size for ten images or ten thousand;
* ``<out>/report/thumbs/*.jpg``: small JPEG thumbnails, made once and reused while their source is older.

A folder edited by hand or left by an interrupted run is reported as it is: rows whose files are gone
show them as missing and are listed at the top, as are damaged result lines and image files that no
result names.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from xviz.errors import XvizError

RESULTS = "xviz-results.jsonl"
SETTINGS = "xviz-settings.json"
EVALUATION = "xviz-evaluation.json"
PAGE = "index.html"
ASSETS = "report"
THUMB_SIDE = 160
_HERE = Path(__file__).parent


def append_records(out_dir: str | Path, records: list[dict]) -> None:
    """Append one JSON line per record to ``<out_dir>/xviz-results.jsonl`` and flush it to disk.

    A record is one image: ``{"image", "shown", "predicted", "prob", "outputs": [{"method", "layer",
    "target", "prob", "rank", "overlay", "panel"}]}`` with file paths relative to ``out_dir``.
    Lines are whole or, after a kill, a last partial line that :func:`read_results` skips and counts.
    """
    if not records:
        return
    text = "".join(json.dumps(r, ensure_ascii=True, sort_keys=True) + "\n" for r in records)
    with open(Path(out_dir) / RESULTS, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_settings(out_dir: str | Path, settings: dict) -> Path:
    """Write the run's settings (model, methods, layer, targets, versions, command) atomically."""
    from xviz.render import atomic_write

    path = Path(out_dir) / SETTINGS
    text = json.dumps(settings, indent=2, sort_keys=True, default=str)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_evaluation(out_dir: str | Path, title: str, columns: list[str], rows: list[list], figures: list[tuple[str, str]]) -> Path:
    """Write ``<out_dir>/xviz-evaluation.json``: the ranking table (``columns``, ``rows``) and the figures
    (``(file relative to out_dir, caption)``) that the report page shows above the images."""
    from xviz.render import atomic_write

    data = {"title": title, "columns": list(columns), "rows": [[str(c) for c in row] for row in rows],
            "figures": [{"path": path, "caption": caption} for path, caption in figures]}
    text = json.dumps(data, indent=1, ensure_ascii=True)
    return atomic_write(Path(out_dir) / EVALUATION, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


@dataclass
class Results:
    """What an output folder holds: settings, the latest record per image, damaged line count."""

    settings: dict = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)
    damaged: int = 0


def read_results(out_dir: str | Path) -> Results:
    """Read the folder's settings and result lines; a later line for the same image replaces an
    earlier one (a rerun into the same folder), unparsable lines are counted, not fatal."""
    out_dir = Path(out_dir)
    results = Results()
    try:
        results.settings = json.loads((out_dir / SETTINGS).read_text(encoding="utf-8"))
        if not isinstance(results.settings, dict):
            raise ValueError
    except FileNotFoundError:
        pass
    except (OSError, ValueError):
        results.damaged += 1
    by_image: dict[str, dict] = {}
    try:
        lines = (out_dir / RESULTS).read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("image"), str):
                raise ValueError
        except ValueError:
            results.damaged += 1
            continue
        by_image.pop(record["image"], None)
        by_image[record["image"]] = record
    results.records = list(by_image.values())
    return results


def read_labels(path: str | Path) -> dict[str, str]:
    """True classes from a file: JSON ``{"file": "class"}`` or CSV/TSV lines ``file,class`` (a header
    line ``file,label`` is skipped). Keys match an image by its path as given, its relative path's
    tail, or its file name."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise XvizError(f"cannot read the labels file `{path}` ({exc.strerror or exc}): check --labels") from None
    if path.suffix.lower() == ".json":
        try:
            labels = json.loads(text)
        except ValueError as exc:
            raise XvizError(f"the labels file `{path}` is not valid JSON ({exc}): write {{\"file\": \"class\"}}") from None
        if not isinstance(labels, dict):
            raise XvizError(f"the labels file `{path}` must hold one object {{\"file\": \"class\"}}")
        return {str(k): str(v) for k, v in labels.items()}
    dialect = "excel-tab" if "\t" in text.split("\n", 1)[0] else "excel"
    labels = {}
    for number, row in enumerate(csv.reader(text.splitlines(), dialect=dialect), 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2:
            raise XvizError(f"line {number} of the labels file `{path}` has {len(row)} fields: write `file,class`")
        if number == 1 and [c.strip().lower() for c in row] in (["file", "label"], ["file", "class"], ["image", "label"]):
            continue
        labels[row[0].strip()] = row[1].strip()
    return labels


def true_label(image: str, labels: dict[str, str], class_names: list[str]) -> str | None:
    """The image's true class: from ``labels`` (path, path tail or file name), else its folder's name
    when that is a class name (the ImageFolder layout), else ``None``."""
    p = Path(image)
    parts = p.parts
    for i in range(len(parts)):
        key = "/".join(parts[i:])
        if key in labels:
            return labels[key]
    if image in labels:
        return labels[image]
    lowered = {c.lower(): c for c in class_names}
    return lowered.get(p.parent.name.lower())


def _thumbnail(source: Path, target: Path) -> bool:
    """A JPEG of at most THUMB_SIDE px per side; reused while newer than its source."""
    from PIL import Image

    try:
        if target.exists() and target.stat().st_mtime >= source.stat().st_mtime:
            return True
        with Image.open(source) as im:
            im.draft("RGB", (THUMB_SIDE, THUMB_SIDE))
            im = im.convert("RGB")
            im.thumbnail((THUMB_SIDE, THUMB_SIDE))
            from xviz.render import atomic_write

            atomic_write(target, lambda tmp: im.save(tmp, format="JPEG", quality=85))
        return True
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


def _thumb_name(relative: str) -> str:
    digest = hashlib.sha1(relative.encode("utf-8")).hexdigest()[:16]
    return f"{ASSETS}/thumbs/{digest}.jpg"


def _row(record: dict, out_dir: Path, labels: dict, class_names: list[str], missing: list[str], progress) -> dict:
    image = record["image"]
    source = Path(record.get("path") or image)
    row = {"image": image, "name": record.get("shown") or Path(image).name, "predicted": record.get("predicted"),
           "prob": record.get("prob"), "label": record.get("label") or true_label(image, labels, class_names),
           "thumb": None, "cells": {}}
    thumb = _thumb_name("source:" + image)
    if source.is_file() and _thumbnail(source, out_dir / thumb):
        row["thumb"] = thumb
    for output in record.get("outputs", []):
        cell = {k: output.get(k) for k in ("target", "prob", "rank", "layer")}
        overlay = output.get("overlay")
        if overlay and (out_dir / overlay).is_file():
            cell["full"] = overlay
            cell["thumb"] = _thumb_name(overlay) if _thumbnail(out_dir / overlay, out_dir / _thumb_name(overlay)) else overlay
        elif overlay:
            missing.append(overlay)
        panel = output.get("panel")
        if panel and (out_dir / panel).is_file():
            cell["full"] = panel
        elif panel:
            missing.append(panel)
        name = output.get("method", "?") + (f" ({output['layer']})" if output.get("per_layer") else "")
        row["cells"].setdefault(name, []).append(cell)
    progress()
    return row


def report_data(out_dir: str | Path, labels: dict[str, str] | None = None, show_progress: bool = True) -> dict:
    """Everything the page shows, as plain data (also what ``report/data.js`` holds)."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    results = read_results(out_dir)
    settings = results.settings
    class_names = list(settings.get("class_names") or [])
    labels = {**(settings.get("labels") or {}), **(labels or {})}
    missing: list[str] = []
    with tqdm(total=len(results.records), unit="img", desc="report", disable=not show_progress or len(results.records) < 50) as bar:
        rows = [_row(r, out_dir, labels, class_names, missing, lambda: bar.update(1)) for r in results.records]
    named = {c.get("full") for r in rows for cells in r["cells"].values() for c in cells}
    named |= {o.get(k) for r in results.records for o in r.get("outputs", []) for k in ("overlay", "panel")}
    unlisted = sorted(p.name for p in out_dir.glob("*.png") if p.name not in named and not p.name.startswith("."))
    methods = list(dict.fromkeys(m for r in rows for m in r["cells"]))
    evaluation = None
    if (out_dir / EVALUATION).is_file():
        try:
            evaluation = json.loads((out_dir / EVALUATION).read_text(encoding="utf-8"))
        except ValueError:
            results.damaged += 1
    return {"title": settings.get("title") or f"xviz report: {out_dir.name}", "settings": _shown_settings(settings),
            "methods": methods, "rows": rows, "missing": sorted(set(missing)), "unlisted": unlisted,
            "damaged": results.damaged, "has_labels": any(r["label"] for r in rows), "evaluation": evaluation}


def _shown_settings(settings: dict) -> dict:
    """The settings a reader of the page needs, as short strings."""
    keys = ("command", "model", "checkpoint", "weights", "methods", "layer", "target", "topk", "device", "versions",
            "finished")
    shown = {}
    for key in keys:
        value = settings.get(key)
        if value in (None, "", [], {}):
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value))
        shown[key] = str(value)
    return shown


def build_report(out_dir: str | Path, labels: str | Path | None = None, show_progress: bool = True) -> Path:
    """Write ``index.html`` and ``report/`` into ``out_dir`` from what the folder holds; returns the page."""
    import shutil

    import jinja2

    from xviz.render import atomic_write

    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise XvizError(f"`{out_dir}` is not a folder: give the --out folder of an explain or evaluate run")
    if not (out_dir / RESULTS).exists() and not (out_dir / EVALUATION).exists():
        raise XvizError(f"`{out_dir}` holds no {RESULTS} or {EVALUATION}: run `xviz explain ... --out {out_dir}` "
                        "(or `xviz evaluate ... --out`) first")
    data = report_data(out_dir, read_labels(labels) if labels else None, show_progress)
    assets = out_dir / ASSETS
    assets.mkdir(exist_ok=True)
    for name in ("report.js", "report.css"):
        atomic_write(assets / name, lambda tmp, name=name: shutil.copyfile(_HERE / name, tmp))
    payload = "window.XVIZ_REPORT = " + json.dumps(data, ensure_ascii=True, separators=(",", ":")) + ";\n"
    atomic_write(assets / "data.js", lambda tmp: Path(tmp).write_text(payload, encoding="utf-8"))
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(_HERE), autoescape=True)
    page = env.get_template("index.html.j2").render(data=data, assets=ASSETS)
    return atomic_write(out_dir / PAGE, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
