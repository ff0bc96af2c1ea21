"""The documentation gallery (``xviz gallery``), drawn by xviz itself.

The gallery has two kinds of pages, both generated:

* **method pages**, one per method in the registry (:func:`xviz.registry.methods`): its summary,
  reference, definition (the class docstring) and overlays on the bundled demo model for the
  sample images. A third-party plugin's method gets its page by being installed.
* **figure pages**, one per entry of ``FIGURES`` (gathered in ``figures.py`` from the modules beside it): each figure the source documents show,
  reproduced with xviz commands (training runs included) on the synthetic dataset, or on the real
  datasets when ``--data`` points at them. An entry *is* its list of commands: the generator runs
  exactly them, in-process, and the page shows them as "reproduce with". An entry whose method or
  command is not registered is listed as pending.

Training runs are cached in ``--runs`` (default ``runs/gallery``): a run folder holding a
checkpoint is resumed (``xviz train --resume``, which does nothing once it is finished) instead of
trained again; delete a run folder to retrain it.

The core knows plugins only through the registry: nothing here imports a plugin.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from xviz.errors import XvizError
from xviz.gallery.figures import DEFAULT_RUNS, DEFAULT_SAMPLES, Figure, Setting, Step
from xviz.gallery.figures import FIGURES
from xviz.gallery.pages import (FigureResult, MethodResult, existing_method, figure_page, method_page, run_xviz,
                                write_index)

__all__ = ["FIGURES", "Figure", "Setting", "Step", "generate", "run_xviz"]



def generate(out, *, pm=None, samples=DEFAULT_SAMPLES, runs=DEFAULT_RUNS, data=None, figures=True,
             only: list[str] | None = None, pages_only: bool = False) -> tuple[list[MethodResult], list[FigureResult]]:
    """Write the gallery into ``out``: ``index.md``, ``methods/NAME.md`` for every registered method and
    ``figures/SLUG.md`` for every entry of :data:`FIGURES` (``figures=False``: keep the figure pages
    already there; ``only``: regenerate just these figures, and keep the method pages; ``pages_only``: rewrite their pages from the
    pictures already there, without running their commands)."""
    from tqdm import tqdm

    from xviz import registry
    from xviz.commands import command_names
    from xviz.images import list_images

    pm = pm or registry.default_plugin_manager()
    out = Path(out)
    sample_dir = Path(samples)
    if not sample_dir.exists():
        raise XvizError(f"sample images `{samples}` not found: run from the repository root or pass --samples")
    sample_paths = list_images([str(sample_dir)])
    sample_arg = [str(sample_dir)]
    if only:
        unknown = sorted(set(only) - {f.slug for f in FIGURES})
        if unknown:
            raise XvizError(f"unknown figure `{unknown[0]}`: choose from {', '.join(f.slug for f in FIGURES)}")

    found = registry.methods(pm)
    commands = command_names(pm)
    missing = {f.slug: [m for m in f.methods if m not in found] + [c for c in f.commands if c not in commands]
               for f in FIGURES}
    wanted = {f.slug for f in FIGURES if not missing[f.slug] and figures and (not only or f.slug in only)}
    drawn = {f.slug for f in FIGURES if (out / "figures" / f"{f.slug}.md").is_file()}
    available = [f for f in FIGURES if not missing[f.slug]
                 and (f.slug in drawn or (f.slug in wanted and not pages_only))]
    if only:  # one figure: the method pages stay as they are
        method_results = [existing_method(method, found.plugins[name], out) for name, method in sorted(found.items())]
    else:
        shutil.rmtree(out / "methods", ignore_errors=True)  # a method no longer registered loses its page
        method_results = []
        for name, method in tqdm(sorted(found.items()), desc="gallery: methods", unit="method", file=sys.stderr):
            method_results.append(method_page(method, found.plugins[name], out, sample_paths, sample_arg, pm,
                                              available))

    figure_results = []
    for fig in FIGURES:
        setting = Setting(runs=str(runs), page=str(out / "figures" / fig.slug), samples=str(sample_dir), data=data)
        if missing[fig.slug]:
            result = FigureResult(fig, missing=missing[fig.slug])
            page = out / "figures" / f"{fig.slug}.md"
            page.unlink(missing_ok=True)
            shutil.rmtree(out / "figures" / fig.slug, ignore_errors=True)
        elif fig.slug in wanted and pages_only and fig.slug not in drawn:
            result = FigureResult(fig)  # never drawn: nothing to rewrite, the index says how to make it
        elif fig.slug in wanted:
            Path(setting.page).mkdir(parents=True, exist_ok=True)
            result = figure_page(fig, out, setting, pm, run=not pages_only)
            print(f"gallery: wrote {out / result.page} ({result.seconds:.0f} s)", file=sys.stderr)
        elif (out / "figures" / f"{fig.slug}.md").is_file():
            result = FigureResult(fig, page=f"figures/{fig.slug}.md", images=fig.images(setting))
        else:
            result = FigureResult(fig)  # available, never generated here: the index says how to make it
        figure_results.append(result)
    write_index(out, method_results, figure_results, Setting(str(runs), "", str(sample_dir), data))
    return method_results, figure_results
