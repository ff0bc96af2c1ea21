"""The gallery's pages: one per registered method, one per figure, and the index; each picture drawn by
running ``xviz`` commands in-process."""

from __future__ import annotations

import contextlib
import inspect
import io
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from xviz.errors import XvizError
from xviz.gallery import catalogue, records
from xviz.gallery.figures import DEMO_MODEL, PANEL_SAMPLE, Figure, Setting


def run_xviz(argv: list[str], pm) -> int:
    """Run ``xviz ARGV`` in this process with plugin manager ``pm``; a user's mistake raises
    :class:`XvizError`, a command's non-zero exit code is returned."""
    from xviz.commands import run_command

    try:
        return run_command(argv, pm)
    except SystemExit as exc:
        raise XvizError(f"`xviz {shlex.join(argv)}` is not a valid command (exit {exc.code})") from None


def shown(argv: list[str]) -> str:
    """The command as a user types it: ``xviz ...``, paths relative to the working directory."""
    cwd = Path.cwd()

    def rel(arg: str) -> str:
        if arg.startswith("/"):
            with contextlib.suppress(ValueError):
                return str(Path(arg).relative_to(cwd))
        return arg

    return "xviz " + shlex.join(rel(a) for a in argv)


def _has_checkpoint(run: str) -> bool:
    folder = Path(run)
    return (folder / "last.pt").is_file() or any((folder / "checkpoints").glob("*.pt"))


def _md_docstring(text: str) -> str:
    """A reST-ish docstring as Markdown: ``code`` -> `code`, :role:`x` -> `x`."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def method_doc(method) -> str:
    """The method's own docstring (its class's, or its function's for ``@xviz.methods.method``)."""
    owner = getattr(method, "fn", None) or type(method)
    doc = owner.__dict__.get("__doc__") if isinstance(owner, type) else owner.__doc__
    return inspect.cleandoc(doc) if doc else ""


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "method"


def _write(path: Path, text: str) -> None:
    from xviz.render import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


@dataclass
class MethodResult:
    name: str
    plugin: str
    page: str
    summary: str = ""
    images: list[str] = field(default_factory=list)
    problem: str = ""


def method_page(method, plugin: str, out: Path, samples: list[Path], sample_arg: list[str], pm,
                figures: list[Figure]) -> MethodResult:
    """Explain the samples with ``method`` on the demo model into ``out/methods/NAME/`` and write
    ``out/methods/NAME.md``."""
    name = method.name
    folder = out / "methods" / _safe(name)
    argv = ["explain", "--model", DEMO_MODEL, "--method", name, "--grid", "--panel", "--out", str(folder), *sample_arg]
    result = MethodResult(name, plugin, f"methods/{_safe(name)}.md", method.summary or "")
    folder.mkdir(parents=True, exist_ok=True)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            code = run_xviz(argv, pm)
        if code:
            result.problem = (captured.getvalue().strip().splitlines() or [f"exit code {code}"])[-1]
    except XvizError as exc:
        result.problem = str(exc).strip().splitlines()[-1]
    except Exception as exc:  # a broken third-party method must not stop the gallery: its page says so
        result.problem = f"the method failed: {type(exc).__name__}: {exc}"
    keep = [f"grid_{name}.png"]
    panel_stem = PANEL_SAMPLE if any(p.stem == PANEL_SAMPLE for p in samples) else samples[0].stem
    keep.append(f"{panel_stem}_{name}_panel.png")
    layered = f"{panel_stem}_{name}_layers.png"  # methods with one map per layer
    keep.append(layered)
    for path in folder.iterdir():  # the page shows the grid and one panel; the rest is not committed
        if path.name not in keep:
            path.unlink()
    result.images = [k for k in keep if (folder / k).is_file()]
    if not result.images:
        shutil.rmtree(folder, ignore_errors=True)

    ref = getattr(method, "reference", "") or ""
    lines = [f"# {name}", "", f"**{method.summary or 'no summary given'}**", "",
             "| property | value |", "| --- | --- |",
             f"| plugin | `{plugin}` ({pm.infos[plugin].source if plugin in pm.infos else 'registered in code'}) |",
             f"| reference | {f'<{ref}>' if ref.startswith('http') else (ref or '-')} |",
             f"| target layer | {'yes (`--layer`; default: the model' + chr(39) + 's)' if method.uses_layer else 'not needed'} |",
             f"| maps | {'signed, drawn with a diverging colormap' if method.signed else 'non-negative'} |", ""]
    doc = method_doc(method)
    if doc:
        lines += ["## Definition", "", _md_docstring(doc), ""]
    using = [f for f in figures if name in f.methods]
    lines += [] if result.images else _figure_maps(name, using, out)  # its maps where it applies, first
    lines += ["## On the demo model", ""]
    if result.images:
        lines += [f"The bundled demo model (`{DEMO_MODEL}`, six classes that differ by one part) on the "
                  "bundled sample images, each titled with its explained class and probability:", ""]
        lines += [f"![{name} of the demo model: {img}]({_safe(name)}/{img})" for img in result.images]
        lines += ["", "Reproduce with (it also writes one overlay and one panel per image; this page keeps the "
                  "grid and one panel):", ""]
    else:
        lines += [f"`{name}` does not apply to the demo model. `xviz explain` says:", "", "```console",
                  f"xviz: error: {result.problem}", "```", "", "The command:", ""]
    lines += ["```bash", shown(argv), "```", ""]
    if result.images and result.problem:
        lines += [f"(It also reported: `{result.problem}`.)", ""]
    if using:
        lines += ["## Figures using it", ""] + [f"- [{f.title}](../figures/{f.slug}.md)" for f in using] + [""]
    _write(out / result.page, "\n".join(lines))
    return result


def existing_method(method, plugin: str, out: Path) -> MethodResult:
    """A method's page as the gallery last wrote it (for the index, when only figures are redrawn)."""
    result = MethodResult(method.name, plugin, f"methods/{_safe(method.name)}.md", method.summary or "")
    folder = out / "methods" / _safe(method.name)
    result.images = sorted((p.name for p in folder.glob("*.png")), key=lambda n: not n.startswith("grid_")) \
        if folder.is_dir() else []
    return result


def _figure_maps(name: str, using: list[Figure], out: Path) -> list[str]:
    """For a method the demo model cannot run: its maps as the figure pages using it show them, on the
    network those figures train for it."""
    lines = []
    for fig in using:
        folder = out / "figures" / fig.slug
        shots = sorted(p.name for p in folder.glob(f"*_{name}_*.png")) if folder.is_dir() else []
        if shots:
            lines += [f"## On the network of [{fig.title}](../figures/{fig.slug}.md)", "",
                      f"That figure's commands train a network `{name}` applies to; its maps there:", ""]
            lines += [f"![{name}: {shot}](../figures/{fig.slug}/{shot})" for shot in shots] + [""]
    return lines


@dataclass
class FigureResult:
    figure: Figure
    page: str = ""
    images: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # unregistered methods / commands
    seconds: float = 0.0


def figure_page(fig: Figure, out: Path, setting: Setting, pm, run: bool = True) -> FigureResult:
    """Run ``fig``'s steps (reusing run folders that hold a checkpoint) and write its page."""
    result = FigureResult(fig, page=f"figures/{fig.slug}.md")
    steps = fig.steps(setting)
    start = time.perf_counter()
    if run:
        for i, step in enumerate(steps, 1):
            argv = step.argv
            if step.run and _has_checkpoint(step.run):
                print(f"gallery: {fig.slug} [{i}/{len(steps)}] reusing run {step.run}", file=sys.stderr)
                argv = ["train", "--resume", step.run]
            else:
                print(f"gallery: {fig.slug} [{i}/{len(steps)}] {shown(step.argv)}", file=sys.stderr)
            code = run_xviz(argv, pm)
            if code:
                raise XvizError(f"figure `{fig.slug}`: `{shown(argv)}` exited with code {code}")
    result.seconds = time.perf_counter() - start
    folder = Path(setting.page)
    result.images = fig.images(setting)
    absent = [img for img in result.images if not (folder / img).is_file()]
    if absent:
        raise XvizError(f"figure `{fig.slug}`: its commands did not write {', '.join(absent)} into `{folder}`")
    keep = {*result.images, *fig.tables, records.RECORD}
    for path in folder.iterdir():  # only the pictures shown are kept (and committed)
        if path.is_file() and path.name not in keep:
            path.unlink()

    lines = [f"# {fig.title}", "", *reproduction_box(fig, setting), fig.description, ""]
    lines += [f"![{fig.title}: {img}]({fig.slug}/{img})" for img in result.images]
    lines += ["", "## Reproduce with", ""]
    source = (f"on the real datasets under `{setting.data}`" if setting.data
              else "on the synthetic part dataset (no download; `--data ROOT` uses the real datasets instead)")
    lines += [f"Made by `xviz gallery` {source}, with exactly these commands:", "", "```bash"]
    lines += [shown(step.argv) for step in steps] + ["```", ""]
    trained = [step.run for step in steps if step.run]
    records.write_records(folder, trained)  # the numbers docs pages may quote (xviz.gallery.records)
    page = out / result.page
    before = page.read_text() if page.is_file() else ""
    if trained:
        lines += ["Training runs are cached: `xviz gallery` resumes a run folder that already holds a checkpoint "
                  "(a finished run is reused as is). What they reached:", "",
                  "| run | epochs | best test accuracy | training time |", "| --- | --- | --- | --- |"]
        lines += [_run_row(r, before) for r in trained] + [""]
    kept = [t for t in fig.tables if (folder / t).is_file()]
    if kept:
        lines += ["The numbers behind it: " + ", ".join(f"[{t}]({fig.slug}/{t})" for t in kept), ""]
    if fig.methods:
        lines += ["Methods: " + ", ".join(f"[{m}](../methods/{_safe(m)}.md)" for m in fig.methods), ""]
    if fig.note:
        lines += [fig.note.format(runs=setting.runs), ""]
    _write(page, "\n".join(lines))
    return result


def real_data_commands(fig: Figure, setting: Setting) -> list[str]:
    """The commands that draw ``fig`` on the real datasets under ``ROOT`` (``[]`` when they depend on
    the files there, e.g. images picked from the dataset)."""
    real = Setting(setting.runs, setting.page, setting.samples, data="ROOT")
    try:
        return [shown(step.argv) for step in fig.steps(real)]
    except (XvizError, OSError):
        return []


def reproduction_box(fig: Figure, setting: Setting) -> list[str]:
    """The note at the top of a figure page: the document figure it reproduces, on what data and how
    faithfully, and the command for the real dataset."""
    row = catalogue.row_for(fig)
    source = fig.source or (row.source if row else "")
    differs = (fig.reproduction or (row.why if row else "")).strip()
    differs = differs[:1].upper() + differs[1:] if differs else ""
    differs = differs if not differs or differs.endswith(".") else differs + "."
    title = f"Reproduces {source}" if source else "How this figure is made"
    real = real_data_commands(fig, setting)
    same = real == [shown(step.argv) for step in fig.steps(setting)]
    if setting.data:
        data = f"Drawn on the real datasets under `{setting.data}`."
    else:
        data = "Drawn offline" + ("." if same else " on the synthetic part dataset (CPU minutes).")
    body = [data + (" " + differs if differs else ""), ""]
    if same:
        body.append("The commands below do not change with the real datasets (`--data ROOT`).")
    elif not setting.data:
        body.append(f"On the real dataset: `xviz gallery --figure {fig.slug} --data ROOT`"
                    + (", which runs:" if real else " (it picks images from the dataset)."))
        body += ["", "```bash", *real, "```"] if real else []
    return [f'!!! info "{title}"', "", *[("    " + line).rstrip() for line in body], ""]


def _run_row(run: str, before: str = "") -> str:
    """The run table's row for ``run``; when its folder is gone (a page rewritten without running its
    commands), the row the page had before."""
    from xviz.train.history import read_history

    try:
        rows = read_history(run)
    except XvizError:
        kept = re.search(rf"^\| `{re.escape(Path(run).name)}` \|.*$", before, re.M)
        return kept.group(0) if kept else f"| `{Path(run).name}` | ? | ? | ? |"
    best = max((r.get("test_acc", 0.0) for r in rows), default=0.0)
    seconds = sum(float(r.get("seconds", 0.0) or 0.0) for r in rows)
    return f"| `{Path(run).name}` | {len(rows)} | {100 * best:.2f} % | {seconds / 60:.1f} min |"


def _thumb(path: str, alt: str) -> str:
    return f"![{alt}]({path}){{ width=\"220\" }}"


def write_index(out: Path, methods: list[MethodResult], figures: list[FigureResult], setting: Setting) -> None:
    lines = ["# Gallery", "",
             "Every picture here was drawn by xviz itself, by the commands its page shows, and regenerated "
             "by `make docs` (= `xviz gallery --out docs/gallery`, then `mkdocs build --strict`).", "",
             "## Methods", "",
             "One page per method in the registry: an installed third-party plugin's method appears here by "
             "itself. Each is run on the bundled demo model and the bundled sample images.", "",
             "| method | plugin | summary | on the demo model |", "| --- | --- | --- | --- |"]
    for m in methods:
        picture = _thumb(f"{m.page[:-3]}/{m.images[0]}", m.name) if m.images else "does not apply"
        summary = m.summary.replace("|", "\\|")
        lines.append(f"| [{m.name}]({m.page}) | `{m.plugin}` | {summary} | {picture} |")
    lines += ["", "## Figures of the source documents", "",
              "Every figure of the five source documents, and where the gallery stands on it: *reproduced on "
              "synthetic data* (drawn offline by the commands its page shows, on the synthetic part dataset; "
              "`xviz gallery --data ROOT` draws it on the real dataset), *needs the real dataset* (nothing "
              "offline shows the document's effect) or *not reproducible offline* (it needs something that "
              "cannot be downloaded here). Each page says at its top what matches the document and what does "
              "not.", "",
              "| document figure | gallery page | status | what differs, or why not |", "| --- | --- | --- | --- |"]
    for source, f, status, why in catalogue.rows(figures):
        if f is None:
            page = "-"
        elif f.missing:
            page = f"pending: {', '.join(f'`{x}`' for x in f.missing)} is not registered yet"
        elif not f.page:
            page = f"not generated yet: `xviz gallery --figure {f.figure.slug}`"
        else:
            page = f"[{f.figure.title}]({f.page})<br>{_thumb(f'figures/{f.figure.slug}/{f.images[0]}', f.figure.title)}"
        cell = " ".join(why.replace("|", "\\|").split())
        lines.append(f"| {source} | {page} | {status} | {cell or '-'} |")
    lines += ["", "## Regenerating", "", "```bash",
              "xviz gallery --out docs/gallery                 # method pages, then figure pages (trains missing runs)",
              "xviz gallery --out docs/gallery --methods-only  # method pages only (seconds)",
              "xviz gallery --out docs/gallery --figure attempts   # one figure page (method pages kept)",
              "xviz gallery --out docs/gallery --figure attempts --pages-only  # rewrite its page, run nothing",
              "xviz gallery --out docs/gallery --data ~/data   # figures on the real datasets",
              "```", "",
              "Training runs are cached in `--runs` (default `runs/gallery`): a run folder that holds a checkpoint "
              "is resumed, which does nothing once it has finished; delete it to train again. Method pages are "
              "rewritten on every run, and a method that is no longer registered loses its page.", "",
              "## How it is made", "",
              "Method pages come from the registry (`xviz.registry.methods`): for each method, "
              "`xviz explain --model xviz-demo --method NAME --grid --panel` on the sample images; the page keeps "
              "the grid and one panel, and quotes the method's docstring as its definition. A method that does "
              "not apply to the demo model (it raises `XvizError` in `Method.check`) gets a page that says why.", "",
              "Figure pages are data: `xviz.gallery.FIGURES` lists each figure as a title, a description, the "
              "`xviz` commands that draw it (run in-process, exactly as shown) and the pictures they write. An "
              "entry whose methods or commands are not registered stays pending. Adding a figure is adding an "
              "entry there. The document figures themselves are listed in `xviz/gallery/catalogue.py`, so "
              "those without a page still have their row above. Each figure folder keeps `runs.json`, the "
              "records of its training runs, and the tables its commands write: docs pages quote their "
              "numbers from these (`xviz.gallery.records`), and the tests check every quote.", ""]
    _write(out / "index.md", "\n".join(lines))
