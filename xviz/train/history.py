"""Training history: one dict per epoch (``epoch``, ``train_loss``, ``train_acc``, ``test_loss``,
``test_acc``, ``lr``, ``seconds``; accuracies are fractions 0-1), saved as JSON and CSV, read back from
a run folder, a file or a checkpoint, and drawn as the comparison-of-attempts figure.

    write_history("runs/a", history)                   # runs/a/history.json, runs/a/history.csv
    runs = {"flip": read_history("runs/a"), "cutout": read_history("runs/b/last.pt")}
    plot_history(runs, "attempts.png")
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from xviz.errors import XvizError
from xviz.render import atomic_write, save_png

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".tar")

# (key, panel title, y label, is accuracy), in the order of the 2x2 grid
PANELS = (
    ("train_acc", "train accuracy", "accuracy (%)", True),
    ("train_loss", "train loss", "loss", False),
    ("test_acc", "test accuracy", "accuracy (%)", True),
    ("test_loss", "test loss", "loss", False),
)


# --- writing -------------------------------------------------------------------------------------

def _plain(value):
    """JSON for numpy scalars and 0-d tensors (``.item()``); anything else unknown as text."""
    return value.item() if hasattr(value, "item") else str(value)


def history_files(history) -> dict[str, bytes]:
    """The contents of ``history.json`` (a list of dicts) and ``history.csv`` (header: the union of the
    keys in first-seen order; a row without a key leaves its cell empty) for ``history``."""
    rows = [dict(row) for row in history]
    text = json.dumps(rows, indent=1, default=_plain)
    keys = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, keys, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (_plain(v) if hasattr(v, "item") else v) for k, v in row.items()})
    return {"history.json": text.encode("utf-8"), "history.csv": buffer.getvalue().encode("utf-8")}


def write_history(run_dir, history) -> tuple[Path, Path]:
    """Write ``run_dir/history.json`` and ``run_dir/history.csv`` (:func:`history_files`), both atomically."""
    run_dir = Path(run_dir)
    files = history_files(history)
    return tuple(atomic_write(run_dir / name, lambda tmp, data=data: Path(tmp).write_bytes(data))
                 for name, data in files.items())


# --- reading -------------------------------------------------------------------------------------

def read_history(source) -> list[dict]:
    """The per-epoch history of ``source``: a run folder (its ``history.json``, else ``history.csv``,
    else ``last.pt``), a ``.json`` or ``.csv`` file, or an xviz checkpoint (its ``"history"``, loaded
    with ``weights_only=True``). Anything missing or unreadable raises a one-line :class:`XvizError`."""
    path = Path(source)
    if path.is_dir():
        for name in ("history.json", "history.csv", "last.pt", "best.pt"):
            if (path / name).is_file():
                return read_history(path / name)
        raise XvizError(f"run folder `{path}` holds no history.json, history.csv or last.pt: "
                        "give the folder of an `xviz train` run, or a history file")
    if not path.is_file():
        raise XvizError(f"history source `{path}` does not exist: give a run folder, "
                        "a history .json/.csv file or an xviz checkpoint")
    suffix = path.suffix.lower()
    if suffix == ".json":
        rows = _read_json(path)
    elif suffix == ".csv":
        rows = _read_csv(path)
    elif suffix in CHECKPOINT_SUFFIXES:
        from xviz.checkpoint import read_checkpoint

        data = read_checkpoint(path)
        if "history" not in data:
            raise XvizError(f"checkpoint `{path}` carries no training history (it holds weights only)")
        rows = data["history"]
    else:
        raise XvizError(f"`{path}` is not a history file: expected a run folder, a .json or .csv history "
                        f"or a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})")
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise XvizError(f"`{path}` does not hold a history (expected a list of per-epoch records)")
    return [dict(row) for row in rows]


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]


def _read_json(path: Path):
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise XvizError(f"`{path}` is not a readable JSON history ({_first_line(exc)})") from None
    if isinstance(data, dict) and "history" in data:  # e.g. a dumped checkpoint or result record
        data = data["history"]
    return data


def _number(text: str):
    """A CSV cell as int, float or (if neither) the text itself."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _read_csv(path: Path) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = [{k: _number(v) for k, v in row.items() if k is not None and v not in (None, "")}
                    for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise XvizError(f"`{path}` is not a readable CSV history ({_first_line(exc)})") from None
    return rows


# --- the figure ----------------------------------------------------------------------------------

def _series(history: list[dict], key: str, accuracy: bool):
    """Epochs and values of ``key`` (rows without it, or with a non-number, skipped); accuracies in
    percent: a run whose values are all within [0, 1] is taken as fractions and multiplied by 100."""
    xs, ys = [], []
    for position, row in enumerate(history, start=1):
        value = row.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        epoch = row.get("epoch", position)
        xs.append(epoch if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) else position)
        ys.append(float(value))
    if accuracy and ys and max(abs(y) for y in ys) <= 1.0:
        ys = [100.0 * y for y in ys]
    return xs, ys


def _panel_specs(panels) -> list[tuple]:
    """The :data:`PANELS` entries named by ``panels`` (keys, in that order; ``None``: all four)."""
    if panels is None:
        return list(PANELS)
    known = {spec[0]: spec for spec in PANELS}
    unknown = [key for key in panels if key not in known]
    if unknown or not panels:
        raise XvizError(f"unknown panel `{unknown[0] if unknown else ''}`: choose from {', '.join(known)}")
    return [known[key] for key in panels]


def plot_history(runs: dict[str, list[dict]], path, title: str | None = None, panels=None) -> Path:
    """The comparison-of-attempts figure: one panel per entry of ``panels`` (keys of :data:`PANELS`;
    default all four: train accuracy, train loss, test accuracy, test loss) vs epoch, one line per run
    in the same colour in every panel, one shared legend (with each run's best test accuracy),
    accuracies in percent. Four panels make a 2x2 grid with the legend below; three a 2x2 grid whose
    fourth cell holds the legend; one or two a row. Written as a PNG with :func:`xviz.render.save_png`."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if not runs:
        raise XvizError("nothing to plot: no runs were given")
    specs = _panel_specs(panels)
    palette = colormaps["tab10"].colors if len(runs) <= 10 else colormaps["tab20"].colors
    nrows = 1 if len(specs) <= 2 else 2
    ncols = -(-len(specs) // nrows) if len(specs) != 3 else 2
    fig = Figure(figsize=(11, 7.6) if nrows == 2 else (11, 4.4))
    cells = fig.subplots(nrows, ncols, squeeze=False).ravel()
    axes, spare = cells[:len(specs)], cells[len(specs):]
    handles = []
    for r, (name, history) in enumerate(runs.items()):
        color = palette[r % len(palette)]
        longest = max((len(_series(history, key, acc)[0]) for key, _, _, acc in specs), default=0)
        marker = "o" if longest <= 30 else None
        for ax, (key, _, _, accuracy) in zip(axes, specs):
            xs, ys = _series(history, key, accuracy)
            if xs:
                ax.plot(xs, ys, color=color, marker=marker, markersize=3.5, linewidth=1.6)
        xs, ys = _series(history, "test_acc", True)
        label = str(name) if not ys else f"{name} (best test {max(ys):.2f}% at epoch {xs[ys.index(max(ys))]})"
        handles.append(Line2D([], [], color=color, marker=marker, markersize=4, linewidth=1.6, label=label))
    for ax, (key, panel_title, ylabel, _) in zip(axes, specs):
        ax.set_title(panel_title, fontsize=11)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        if not ax.lines:
            ax.text(0.5, 0.5, f"no `{key}` in these runs", transform=ax.transAxes, ha="center", va="center",
                    color="0.5")
    for ax in spare:
        ax.axis("off")
    if len(spare):  # the legend fills the empty cell
        spare[0].legend(handles=handles, loc="center", fontsize=10, frameon=False, title="runs")
        fig.tight_layout(rect=(0, 0, 1, 0.95 if title else 1))
    else:
        ncol = min(len(handles), 3 if nrows == 2 else 2)
        fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=9, frameon=False,
                   bbox_to_anchor=(0.5, 0.0))
        rows = -(-len(handles) // ncol)
        fig.tight_layout(rect=(0, (0.035 if nrows == 2 else 0.07) * rows + 0.02, 1, 0.95 if title else 1))
    if title:
        fig.suptitle(title, fontsize=12)
    return save_png(fig, path)
