"""Run records: the numbers of the gallery's training runs, and the rule that docs quote only them.

Each figure page keeps, beside its pictures, ``runs.json``: per run folder its ``epochs``, ``best`` and
``final`` test accuracy (%), ``minutes`` of training, and per epoch every number of its history
(``test_acc@N``, ``train_acc@N`` in %, ``train_loss@N``, ``train_reg@N``, ``lr@N``, ...). A page that predates it is read from its run table (run, epochs, best test
accuracy, training time).

A figure may also keep tables (CSV files named in its ``tables``), read by their first column and
header. A docs page quotes a number with a marker right after it, an HTML comment a reader never sees::

    the frozen attempt reaches 99.40 %<!-- run frozen best -->
    the masked network: 76.8 %<!-- table afs-channels/afs_compare.csv afds-synthetic/masked.pt masked_test_acc -->

``tests/test_docs.py`` fails when the number before a marker is not the record's value (rounded to
the decimals quoted), so prose cannot drift from the runs the figures show.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

RECORD = "runs.json"
MARKER = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:%|min(?:utes)?|x|M)?\s*<!--\s*(run|table)\s+(\S+)\s+(\S+)(?:\s+(\S+))?\s*-->")
_TABLE_ROW = re.compile(r"^\| `([^`]+)` \| (\d+) \| ([\d.]+) % \| ([\d.]+) min \|$", re.M)


def summarize(history: list[dict]) -> dict:
    """A run's record from its history (rows of ``xviz.train.history.read_history``)."""
    record = {"epochs": len(history),
              "best": round(100 * max((float(r.get("test_acc", 0.0)) for r in history), default=0.0), 4),
              "final": round(100 * float(history[-1].get("test_acc", 0.0)), 4) if history else 0.0,
              "minutes": round(sum(float(r.get("seconds", 0.0) or 0.0) for r in history) / 60, 4)}
    for row in history:
        epoch = int(row.get("epoch", 0))
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                record[f"{key}@{epoch}"] = round((100 if key.endswith("_acc") else 1) * float(value), 4)
    return record


def write_records(folder: Path, runs: list[str]) -> Path | None:
    """Write ``folder/runs.json`` for the run folders ``runs`` (those with a history)."""
    from xviz.errors import XvizError
    from xviz.render import atomic_write
    from xviz.train.history import read_history

    records = {}
    for run in runs:
        try:
            records[Path(run).name] = summarize(read_history(run))
        except XvizError:
            continue
    if not records:
        return None
    text = json.dumps(records, indent=1, sort_keys=True) + "\n"
    return atomic_write(folder / RECORD, lambda tmp: Path(tmp).write_text(text))


def read_records(gallery: Path) -> dict[str, dict]:
    """Every run record of a gallery folder: ``{run name: {key: value}}`` from the figure pages'
    ``runs.json`` files, and from their run tables where a page has none."""
    records: dict[str, dict] = {}
    figures = Path(gallery) / "figures"
    for page in sorted(figures.glob("*.md")):
        for run, epochs, best, minutes in _TABLE_ROW.findall(page.read_text()):
            records.setdefault(run, {}).update(epochs=int(epochs), best=float(best), minutes=float(minutes))
    for path in sorted(figures.glob(f"*/{RECORD}")):
        for run, record in json.loads(path.read_text()).items():
            records.setdefault(run, {}).update(record)
    return records


def read_tables(gallery: Path) -> dict[str, dict[str, dict]]:
    """The CSV tables the figure pages keep: ``{"SLUG/FILE.csv": {row key: {header: value}}}``; a row's
    key is its first column, or ``first:second`` where the first column repeats (``ratio:0.25``)."""
    import csv
    from collections import Counter

    tables = {}
    for path in sorted((Path(gallery) / "figures").glob("*/*.csv")):
        rows = list(csv.DictReader(path.read_text().splitlines()))
        columns = list(rows[0]) if rows else []
        repeats = Counter(row[columns[0]] for row in rows)
        tables[f"{path.parent.name}/{path.name}"] = {
            (row[columns[0]] if repeats[row[columns[0]]] == 1 else f"{row[columns[0]]}:{row[columns[1]]}"): row
            for row in rows}
    return tables


def check_quotes(text: str, records: dict[str, dict], tables: dict | None = None) -> list[str]:
    """What is wrong with the markers of a page's text: unknown runs, tables, rows or keys, and numbers
    that are not the record's value rounded to the decimals quoted."""
    problems = []
    for number, kind, run, key, column in MARKER.findall(text):
        if kind == "table":
            problems += _check_table(number, run, key, column, tables or {})
            continue
        if run not in records:
            problems.append(f"`{number}` quotes run `{run}`, which no gallery figure records")
            continue
        if key not in records[run]:
            problems.append(f"`{number}` quotes `{key}` of run `{run}`, which its record does not hold "
                            f"(it holds {', '.join(sorted(records[run])[:8])}, ...)")
            continue
        problems += _compare(number, float(records[run][key]), f"`{key}` of run `{run}`")
    return problems


def _check_table(number: str, table: str, row: str, column: str, tables: dict) -> list[str]:
    held = tables.get(table, {}).get(row, {}).get(column)
    if held is None:
        return [f"`{number}` quotes `{column}` of row `{row}` of `{table}`, which the gallery does not hold"]
    return _compare(number, float(held), f"`{column}` of row `{row}` of `{table}`")


def _compare(number: str, held: float, what: str) -> list[str]:
    decimals = len(number.partition(".")[2])  # the quote is the record rounded to as many decimals
    if abs(held - float(number)) > 10 ** -decimals / 2 + 1e-9:
        return [f"`{number}` quotes {what}, which holds {held:g}"]
    return []
