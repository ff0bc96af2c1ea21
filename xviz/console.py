"""What every command shares on the console: tables, writable folders, "did you mean" and
comma-separated lists. Light: no torch, and no import of the registry (which uses it)."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Iterable

from xviz.errors import XvizError


def table(rows: Iterable[Iterable], header: list[str]) -> str:
    """Rows as left-aligned columns under ``header`` and a rule of dashes."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r):
        return "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def did_you_mean(name: str, choices: Iterable[str], n: int = 3, cutoff: float = 0.5) -> str:
    """``"did you mean `a`, `b`? "`` for the choices closest to ``name``, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=cutoff)
    return f"did you mean {', '.join(f'`{c}`' for c in close)}? " if close else ""


def writable_folder(path) -> Path:
    """``path`` as a folder that exists and can be written, or an error saying why not."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise XvizError(f"`{folder}` is a file, not a folder: choose another --out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise XvizError(f"cannot create the folder `{folder}` ({exc.strerror or exc}): choose another --out") from None
    if not os.access(folder, os.W_OK):
        raise XvizError(f"cannot write into `{folder}` (permission denied): choose another --out")
    return folder


def png_path(value) -> Path:
    """``--out`` as the path of a PNG file, or an error saying it must name one."""
    out = Path(value)
    if out.suffix.lower() != ".png":
        raise XvizError(f"`--out {out}` must name a .png file")
    return out


def split_names(values, default: Iterable[str] = ()) -> list[str]:
    """Names from repeated and/or comma-separated flags (``--method a,b --method c``), blanks dropped."""
    values = values if isinstance(values, (list, tuple)) else [values] if values else list(default)
    return [name.strip() for v in values if v for name in v.split(",") if name.strip()]
