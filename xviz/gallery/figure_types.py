"""What a gallery figure is: the :class:`Figure` entry (its commands for a :class:`Setting`), the
:class:`Step` (one ``xviz`` command line), and the defaults the figure modules share. The entries
themselves live in :mod:`xviz.gallery.figures` and the modules it gathers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from xviz.errors import XvizError

DEFAULT_SAMPLES = "plugins/xviz_zoo/assets/samples"
DEFAULT_RUNS = "runs/gallery"
DEMO_MODEL = "xviz-demo"
PANEL_SAMPLE = "winged"  # the method pages' panel: the synthetic "bird"


@dataclass(frozen=True)
class Setting:
    """Where a figure's commands read and write: ``runs`` (run folders), ``page`` (the page's image
    folder), ``samples`` (the bundled sample images), ``data`` (a real dataset root, or ``None``
    for the synthetic dataset)."""

    runs: str
    page: str
    samples: str
    data: str | None = None

    def sample(self, *names: str) -> list[str]:
        return [f"{self.samples}/{n}.png" for n in names]


@dataclass(frozen=True)
class Step:
    """One ``xviz`` command line (without the leading ``xviz``). ``run``: the run folder a
    ``train`` step writes; it is resumed rather than retrained when it already holds a checkpoint."""

    argv: list[str]
    run: str | None = None


@dataclass(frozen=True)
class Figure:
    """A documented figure: its page's ``title`` and ``description`` (Markdown), the ``steps``
    that draw it for a :class:`Setting`, the ``images`` (file names in the page's folder) shown in
    this order, and what must be registered for it: ``methods`` (also linked from their method
    pages) and ``commands``. ``note`` follows the pictures (Markdown; may use ``{runs}``).
    ``source``: the document figure it reproduces (e.g. "Learn to Pay Attention, Figure 2");
    ``reproduction``: the honest status shown at the top of the page and in the index: on what
    data, what matches the document and what does not."""

    slug: str
    title: str
    description: str
    steps: Callable[[Setting], list[Step]]
    images: Callable[[Setting], list[str]]
    methods: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()
    note: str = ""
    source: str = ""
    reproduction: str = ""
    tables: tuple[str, ...] = ()


def pick_images(data: str, count: int, pattern: str = "CUB_200_2011/images") -> list[str]:
    """``count`` images spread over a real dataset's image folder (sorted, evenly spaced)."""
    root = Path(data).expanduser()
    found = sorted(p for p in root.rglob("*.jpg") if pattern in p.as_posix())
    if not found:
        raise XvizError(f"no images under `{root}` match `{pattern}/**/*.jpg`: point --data at the folder "
                        "holding CUB_200_2011 (see docs/datasets.md)")
    step = max(1, len(found) // count)
    return [str(p) for p in found[::step][:count]]
