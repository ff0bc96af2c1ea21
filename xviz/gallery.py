"""``xviz gallery``: the documentation gallery, drawn by xviz itself; ``xviz misclassified``.

The gallery has two kinds of pages, both generated:

* **method pages**, one per method in the registry (:func:`xviz.registry.methods`): its summary,
  reference, definition (the class docstring) and overlays on the bundled demo model for the
  sample images. A third-party plugin's method gets its page by being installed.
* **figure pages**, one per entry of :data:`FIGURES`: each figure the source documents show,
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
from typing import Callable

from xviz.errors import XvizError

DEFAULT_SAMPLES = "plugins/xviz_zoo/assets/samples"
DEFAULT_RUNS = "runs/gallery"
DEMO_MODEL = "xviz-demo"
PANEL_SAMPLE = "winged"  # the method pages' panel: the synthetic "bird"


# --------------------------------------------------------------------------------------------
# Figure pages: data. One entry per documented figure; add one here and it gets its page.
# --------------------------------------------------------------------------------------------

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
    pages) and ``commands``. ``note`` follows the pictures (Markdown; may use ``{runs}``)."""

    slug: str
    title: str
    description: str
    steps: Callable[[Setting], list[Step]]
    images: Callable[[Setting], list[str]]
    methods: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()
    note: str = ""


def _pick_images(data: str, count: int, pattern: str = "CUB_200_2011/images") -> list[str]:
    """``count`` images spread over a real dataset's image folder (sorted, evenly spaced)."""
    root = Path(data).expanduser()
    found = sorted(p for p in root.rglob("*.jpg") if pattern in p.as_posix())
    if not found:
        raise XvizError(f"no images under `{root}` match `{pattern}/**/*.jpg`: point --data at the folder "
                        "holding CUB_200_2011 (see docs/datasets.md)")
    step = max(1, len(found) // count)
    return [str(p) for p in found[::step][:count]]


# the four attempts of the source documents' CUB experiments, on the synthetic dataset (seed 1:
# images the demo model never saw), as docs/training.md runs them
_SYNTHETIC = ["--model", DEMO_MODEL, "--dataset", "synthetic", "--dataset-options", "size=1000,seed=1",
              "--epochs", "8", "--lr", "0.02", "--batch-size", "32"]
_DEMO_WEIGHTS = "plugins/xviz_zoo/assets/xviz-demo.pt"
_ATTEMPTS = {
    "from-scratch": ["--weights", "none"],
    "frozen": ["--weights", _DEMO_WEIGHTS, "--transfer", "backbone", "--unfreeze", "head=1"],
    "unfrozen": ["--weights", _DEMO_WEIGHTS, "--transfer", "backbone"],
    "freeze-then-unfreeze": ["--weights", _DEMO_WEIGHTS, "--transfer", "backbone", "--unfreeze", "head=1,all=4"],
}
_CUB_ATTEMPTS = ("cub-frozen", "cub-unfrozen", "cub-freeze-then-unfreeze")


def _attempt_runs(s: Setting) -> list[Step]:
    if s.data:
        return [Step(["train", "--recipe", r, "--data", s.data, "--out", f"{s.runs}/{r}"], f"{s.runs}/{r}")
                for r in _CUB_ATTEMPTS]
    return [Step(["train", *_SYNTHETIC, *extra, "--out", f"{s.runs}/{name}"], f"{s.runs}/{name}")
            for name, extra in _ATTEMPTS.items()]


def _best_run(s: Setting) -> str:
    return f"{s.runs}/{'cub-freeze-then-unfreeze' if s.data else 'freeze-then-unfreeze'}"


def _attempts_steps(s: Setting) -> list[Step]:
    runs = [step.run for step in _attempt_runs(s)]
    title = "ResNet-50 on CUB-200-2011: three attempts" if s.data else "xviz-demo on synthetic (seed 1): four attempts"
    return [*_attempt_runs(s), Step(["plot-history", *runs, "--title", title, "--out", f"{s.page}/attempts.png"])]


def _bird_steps(s: Setting) -> list[Step]:
    images = _pick_images(s.data, 1) if s.data else s.sample("winged")
    return [*_attempt_runs(s)[-1:], Step(["explain", "--checkpoint", _best_run(s), "--method", "gradcampp",
                                          "--panel", "--out", s.page, *images])]


def _bird_images(s: Setting) -> list[str]:
    stem = Path(_pick_images(s.data, 1)[0]).stem if s.data else "winged"
    return [f"{stem}_gradcampp_panel.png"]


def _lr_steps(s: Setting) -> list[Step]:
    if s.data:
        args = ["--recipe", "cub-unfrozen", "--data", s.data]
    else:
        args = ["--model", DEMO_MODEL, "--weights", _DEMO_WEIGHTS, "--transfer", "backbone", "--dataset", "synthetic",
                "--dataset-options", "size=1600,seed=1", "--batch-size", "32", "--start-lr", "1e-5"]
    return [Step(["lr-find", *args, "--plot", f"{s.page}/lr_find.png"])]


def _attention_run(s: Setting) -> list[Step]:
    if s.data:
        before = f"{s.runs}/attn-before-cifar100"
        return [Step(["train", "--recipe", "attn-vgg-before-cifar100", "--data", s.data, "--out", before], before),
                Step(["train", "--recipe", "attn-vgg-cub-freeze-then-unfreeze", "--weights", f"{before}/best.pt",
                      "--data", s.data, "--out", f"{s.runs}/attn-cub"], f"{s.runs}/attn-cub")]
    return [Step(["train", "--recipe", "attn-vgg-synthetic", "--out", f"{s.runs}/attn-synthetic"],
                 f"{s.runs}/attn-synthetic")]


def _attention_images_in(s: Setting) -> list[str]:
    return _pick_images(s.data, 3) if s.data else s.sample("winged", "striped", "horned")


def _attention_steps(s: Setting) -> list[Step]:
    run = _attention_run(s)[-1].run
    steps = [*_attention_run(s),
             Step(["explain", "--checkpoint", run, "--method", "attention", "--out", s.page, *_attention_images_in(s)])]
    if not s.data:  # the report needs part masks: the synthetic dataset has them
        steps.append(Step(["attention-report", "--checkpoint", run, "--out", s.page]))
    return steps


def _attention_images(s: Setting) -> list[str]:
    names = [f"{Path(p).stem}_attention_layers.png" for p in _attention_images_in(s)]
    return names if s.data else [*names, "part_attention.png"]


def _misclassified_steps(s: Setting) -> list[Step]:
    data = ["--dataset", "cub200", "--data", s.data] if s.data else \
        ["--dataset", "synthetic", "--dataset-options", "size=1000,seed=2"]
    run = f"{s.runs}/frozen" if not s.data else f"{s.runs}/cub-frozen"
    train = [st for st in _attempt_runs(s) if st.run == run]
    return [*train, Step(["misclassified", "--checkpoint", run, *data, "--method", "gradcampp", "--count", "12",
                          "--out", f"{s.page}/misclassified.png"])]


def _afs_steps(s: Setting) -> list[Step]:
    source, gated = f"{s.runs}/afds-synthetic-source", f"{s.runs}/afds-synthetic"
    return [Step(["train", "--recipe", "afds-synthetic-source", "--out", source], source),
            Step(["train", "--recipe", "afds-synthetic", "--weights", f"{source}/best.pt", "--out", gated], gated),
            Step(["afs-update", "--checkpoint", gated, "--out", f"{gated}/masked.pt"]),
            Step(["afs-report", "--checkpoint", f"{gated}/masked.pt", "--out", s.page]),
            Step(["explain", "--checkpoint", f"{gated}/masked.pt", "--method", "afs-channels", "--out", s.page,
                  *s.sample("winged")])]


FIGURES: list[Figure] = [
    Figure(
        "attention-layers", "Per-layer attention overlays",
        "The source documents' attention figure: the image, then one overlay per attention layer of a "
        "Learn-to-Pay-Attention VGG (`attn_vgg`, attention before pooling), trained here by xviz's own "
        "recipe. Below, where each layer's attention mass falls on the part-annotated test images "
        "(see [attention networks](../../attention.md) for how to read it).",
        _attention_steps, _attention_images, methods=("attention",), commands=("attention-report",),
    ),
    Figure(
        "attempts", "Fine-tuning attempts: accuracy and loss curves",
        "Train and test accuracy and loss per epoch for several fine-tuning attempts, one colour per "
        "attempt, as the source documents compared their CUB-200-2011 runs: from scratch, and from a "
        "pretrained network whose transferred layers stay frozen, all train, or are frozen for the first "
        "epochs and then unfrozen.",
        _attempts_steps, lambda s: ["attempts.png"],
    ),
    Figure(
        "gradcampp-bird", "GradCAM++ on a bird",
        "GradCAM++ of the best attempt (frozen, then unfrozen) on a bird: on the synthetic dataset the "
        "bird is the `winged` creature, whose wing is the only part that tells it from the other "
        "classes; with `--data` it is a CUB-200-2011 test image.",
        _bird_steps, _bird_images, methods=("gradcampp",),
    ),
    Figure(
        "lr-finder", "Learning-rate finder",
        "The exponential learning-rate range test (fastai's): smoothed loss against the learning rate, "
        "with the suggested rate (valley) and the steepest descent marked; here for a new head on the demo "
        "model's convolutions, on synthetic images it never saw (seed 1).",
        _lr_steps, lambda s: ["lr_find.png"],
    ),
    Figure(
        "misclassified", "Misclassified images with their CAMs",
        "Test images the model gets wrong, titled *Predicted / Actual*, each with the GradCAM++ map of "
        "the predicted class: what made the model say it. The model is the *frozen* attempt (only a "
        "new head trained on the demo model's features), which makes enough mistakes to show.",
        _misclassified_steps, lambda s: ["misclassified.png"], methods=("gradcampp",), commands=("misclassified",),
    ),
    Figure(
        "afs-channels", "AFS channel importances",
        "Attentive feature distillation and selection (AFDS, Wang et al. 2020): the channel importances "
        "of the AFS gates of a ResNet-18 transferred with the AFD regulariser, and where the channels each "
        "gate keeps fire.",
        _afs_steps, lambda s: ["channel_importance.png", "kept_fraction.png", "top_channels.png",
                               "winged_afs-channels_layers.png"], methods=("afs-channels",),
        commands=("afs-update", "afs-report"),
    ),
]


# --------------------------------------------------------------------------------------------
# Running xviz commands in-process, on a given plugin manager
# --------------------------------------------------------------------------------------------

def run_xviz(argv: list[str], pm) -> int:
    """Run ``xviz ARGV`` in this process with plugin manager ``pm``; a user's mistake raises
    :class:`XvizError`, a command's non-zero exit code is returned."""
    from xviz.cli import build_parser

    parser = build_parser(pm)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        raise XvizError(f"`xviz {shlex.join(argv)}` is not a valid command (exit {exc.code})") from None
    args.pm = pm
    return args.func(args) or 0


def registered_commands(pm) -> set[str]:
    from xviz.cli import build_parser

    parser = build_parser(pm)
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return set(sub.choices)


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


# --------------------------------------------------------------------------------------------
# Page writing
# --------------------------------------------------------------------------------------------

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
             "| | |", "| --- | --- |",
             f"| plugin | `{plugin}` ({pm.infos[plugin].source if plugin in pm.infos else 'registered in code'}) |",
             f"| reference | {f'<{ref}>' if ref.startswith('http') else (ref or '-')} |",
             f"| target layer | {'yes (`--layer`; default: the model' + chr(39) + 's)' if method.uses_layer else 'not needed'} |",
             f"| maps | {'signed, drawn with a diverging colormap' if method.signed else 'non-negative'} |", ""]
    doc = method_doc(method)
    if doc:
        lines += ["## Definition", "", _md_docstring(doc), ""]
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
    using = [f for f in figures if name in f.methods]
    if using:
        lines += ["## Figures using it", ""] + [f"- [{f.title}](../figures/{f.slug}.md)" for f in using] + [""]
    _write(out / result.page, "\n".join(lines))
    return result


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
    keep = set(result.images)
    for path in folder.iterdir():  # only the pictures shown are kept (and committed)
        if path.is_file() and path.name not in keep:
            path.unlink()

    lines = [f"# {fig.title}", "", fig.description, ""]
    lines += [f"![{fig.title}: {img}]({fig.slug}/{img})" for img in result.images]
    lines += ["", "## Reproduce with", ""]
    source = (f"on the real datasets under `{setting.data}`" if setting.data
              else "on the synthetic part dataset (no download; `--data ROOT` uses the real datasets instead)")
    lines += [f"Made by `xviz gallery` {source}, with exactly these commands:", "", "```bash"]
    lines += [shown(step.argv) for step in steps] + ["```", ""]
    trained = [step.run for step in steps if step.run]
    if trained:
        lines += ["Training runs are cached: `xviz gallery` resumes a run folder that already holds a checkpoint "
                  "(a finished run is reused as is). What they reached:", "",
                  "| run | epochs | best test accuracy | training time |", "| --- | --- | --- | --- |"]
        lines += [_run_row(r) for r in trained] + [""]
    if fig.methods:
        lines += ["Methods: " + ", ".join(f"[{m}](../methods/{_safe(m)}.md)" for m in fig.methods), ""]
    if fig.note:
        lines += [fig.note.format(runs=setting.runs), ""]
    _write(out / result.page, "\n".join(lines))
    return result


def _run_row(run: str) -> str:
    from xviz.train.history import read_history

    try:
        rows = read_history(run)
    except XvizError:
        return f"| `{Path(run).name}` | ? | ? | ? |"
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
              "Each figure the source documents show, reproduced with xviz's training subsystem "
              + ("on the real datasets." if setting.data else
                 "on the synthetic part dataset (small settings, CPU minutes); `xviz gallery --data ROOT` "
                 "reproduces them on the real datasets."), "",
              "| figure | |", "| --- | --- |"]
    for f in figures:
        if f.missing:
            lines.append(f"| {f.figure.title} | pending: {', '.join(f'`{x}`' for x in f.missing)} "
                         "is not registered yet |")
        elif not f.page:
            lines.append(f"| {f.figure.title} | not generated yet: `xviz gallery --figure {f.figure.slug}` "
                         "(trains its runs) |")
        else:
            lines.append(f"| [{f.figure.title}]({f.page}) | {_thumb(f'figures/{f.figure.slug}/{f.images[0]}', f.figure.title)} |")
    lines += ["", "## Regenerating", "", "```bash",
              "xviz gallery --out docs/gallery                 # method pages, then figure pages (trains missing runs)",
              "xviz gallery --out docs/gallery --methods-only  # method pages only (seconds)",
              "xviz gallery --out docs/gallery --figure attempts   # one figure page",
              "xviz gallery --out docs/gallery --data ~/data   # figures on the real datasets",
              "```", "",
              "Training runs are cached in `--runs` (default `runs/gallery`): a run folder that holds a checkpoint "
              "is resumed, which does nothing once it has finished; delete it to train again. Method pages are "
              "rewritten on every run, and a method that is no longer registered loses its page.", "",
              "## How it is made", "",
              "Method pages come from the registry (`xviz.registry.registered`): for each method, "
              "`xviz explain --model xviz-demo --method NAME --grid --panel` on the sample images; the page keeps "
              "the grid and one panel, and quotes the method's docstring as its definition. A method that does "
              "not apply to the demo model (it raises `XvizError` in `Method.check`) gets a page that says why.", "",
              "Figure pages are data: `xviz.gallery.FIGURES` lists each figure as a title, a description, the "
              "`xviz` commands that draw it (run in-process, exactly as shown) and the pictures they write. An "
              "entry whose methods or commands are not registered stays pending. Adding a figure is adding an "
              "entry there.", ""]
    _write(out / "index.md", "\n".join(lines))


# --------------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------------

def generate(out, *, pm=None, samples=DEFAULT_SAMPLES, runs=DEFAULT_RUNS, data=None, figures=True,
             only: list[str] | None = None) -> tuple[list[MethodResult], list[FigureResult]]:
    """Write the gallery into ``out``: ``index.md``, ``methods/NAME.md`` for every registered method and
    ``figures/SLUG.md`` for every entry of :data:`FIGURES` (``figures=False``: keep the figure pages
    already there; ``only``: regenerate just these figures)."""
    from tqdm import tqdm

    from xviz import registry
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

    found = registry.registered(pm, "xviz_register_methods", "method")
    commands = registered_commands(pm)
    missing = {f.slug: [m for m in f.methods if m not in found] + [c for c in f.commands if c not in commands]
               for f in FIGURES}
    wanted = {f.slug for f in FIGURES if not missing[f.slug] and figures and (not only or f.slug in only)}
    available = [f for f in FIGURES if not missing[f.slug]
                 and (f.slug in wanted or (out / "figures" / f"{f.slug}.md").is_file())]
    shutil.rmtree(out / "methods", ignore_errors=True)  # a method no longer registered loses its page
    method_results = []
    for name, (method, plugin) in tqdm(sorted(found.items()), desc="gallery: methods", unit="method", file=sys.stderr):
        method_results.append(method_page(method, plugin, out, sample_paths, sample_arg, pm, available))

    figure_results = []
    for fig in FIGURES:
        setting = Setting(runs=str(runs), page=str(out / "figures" / fig.slug), samples=str(sample_dir), data=data)
        if missing[fig.slug]:
            result = FigureResult(fig, missing=missing[fig.slug])
            page = out / "figures" / f"{fig.slug}.md"
            page.unlink(missing_ok=True)
            shutil.rmtree(out / "figures" / fig.slug, ignore_errors=True)
        elif fig.slug in wanted:
            Path(setting.page).mkdir(parents=True, exist_ok=True)
            result = figure_page(fig, out, setting, pm)
            print(f"gallery: wrote {out / result.page} ({result.seconds:.0f} s)", file=sys.stderr)
        elif (out / "figures" / f"{fig.slug}.md").is_file():
            result = FigureResult(fig, page=f"figures/{fig.slug}.md", images=fig.images(setting))
        else:
            result = FigureResult(fig)  # available, never generated here: the index says how to make it
        figure_results.append(result)
    write_index(out, method_results, figure_results, Setting(str(runs), "", str(sample_dir), data))
    return method_results, figure_results


def cmd_gallery(args) -> int:
    started = time.perf_counter()
    methods, figures = generate(args.out, pm=args.pm, samples=args.samples, runs=args.runs, data=args.data,
                                figures=not args.methods_only, only=args.figure)
    for m in methods:
        if m.problem and m.images:
            print(f"gallery: method `{m.name}` reported: {m.problem}", file=sys.stderr)
    pending = [f for f in figures if f.missing or not f.page]
    print(f"wrote {len(methods)} method page(s) and {len(figures) - len(pending)} figure page(s) to {args.out}/ "
          f"in {time.perf_counter() - started:.0f} s"
          + (f"; not generated (pending or never made): {', '.join(f.figure.slug for f in pending)}" if pending else ""))
    return 0


# --------------------------------------------------------------------------------------------
# xviz misclassified
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Mistake:
    index: int
    predicted: str
    actual: str
    probability: float


def find_mistakes(model, dataset, class_names, batch_size: int = 64, limit: int | None = None):
    """Classify ``dataset`` (items ``(view, label)``, views as the model sees them); returns
    ``(mistakes, total)``, mistakes in dataset order."""
    import torch

    from xviz.models import check_finite_outputs

    device = next(model.module.parameters()).device
    mistakes, total = [], len(dataset) if limit is None else min(limit, len(dataset))
    with torch.no_grad():
        for start in range(0, total, batch_size):
            items = [dataset[i] for i in range(start, min(total, start + batch_size))]
            batch = torch.stack([model.preprocessing.normalize(view) for view, _ in items]).to(device)
            probs = torch.softmax(check_finite_outputs(model.module(batch).float(), model), dim=1)
            p, pred = probs.max(dim=1)
            for j, ((_, label), k, pk) in enumerate(zip(items, pred.tolist(), p.tolist())):
                if k != int(label):
                    mistakes.append(Mistake(start + j, model.class_names[k], class_names[int(label)], pk))
    return mistakes, total


def cmd_misclassified(args) -> int:
    import torch

    from xviz.datasets import load_dataset
    from xviz.explainer import explain_tensors, resolve_methods
    from xviz.models import load_model, torch_device
    from xviz.render import check_alpha, get_cmap, grid, save_png
    from xviz.train.config import parse_groups

    if args.count < 1:
        raise XvizError(f"`--count {args.count}` must be at least 1")
    if "," in args.method:
        raise XvizError(f"`--method {args.method}`: give one method")
    [method] = resolve_methods([args.method], args.pm)
    get_cmap(args.cmap)
    check_alpha(args.alpha)
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise XvizError(f"`--out {out}` must name a .png file")
    model = load_model(args.model, weights=args.weights, checkpoint=args.checkpoint, pm=args.pm)
    model.to(torch_device(args.device)).module.eval()
    options = parse_groups(args.dataset_options or "", "--dataset-options")
    try:
        data, spec = load_dataset(args.dataset, args.split, root=args.data, pm=args.pm,
                                  transform=model.preprocessing.view, **options)
    except TypeError as exc:
        raise XvizError(f"dataset `{args.dataset}` does not accept the options {options}: {exc}") from None
    class_names = list(getattr(data, "classes", None) or spec.class_names)
    if len(class_names) != len(model.class_names):
        raise XvizError(f"the model has {len(model.class_names)} classes and dataset `{args.dataset}` "
                        f"{len(class_names)}: give a checkpoint trained on it")
    mistakes, total = find_mistakes(model, data, class_names, args.batch_size, args.limit)
    print(f"{len(mistakes)} of {total} {args.split} images misclassified "
          f"({100 * (1 - len(mistakes) / max(total, 1)):.2f} % accuracy)")
    if not mistakes:
        print("nothing to draw: every image is classified correctly")
        return 0
    shown_ = mistakes[:args.count]
    views = [data[m.index][0] for m in shown_]
    batch = torch.stack([model.preprocessing.normalize(v) for v in views])
    [exp] = explain_tensors(model, batch, [method], layer=args.layer, pm=args.pm)  # the predicted class
    titles = [f"Predicted: {m.predicted} ({m.probability:.0%})\nActual: {m.actual}" for m in shown_]
    figure = grid(views, list(exp.maps[:, 0]), titles, args.columns, args.alpha, args.cmap, exp.signed)
    print(f"wrote {save_png(figure, out)} ({len(shown_)} images, {method.name} of the predicted class)")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("gallery", help="write the documentation gallery: a page per method and per figure",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/gallery", help="gallery folder (default: docs/gallery)")
    p.add_argument("--runs", default=DEFAULT_RUNS, help=f"where training runs are cached (default: {DEFAULT_RUNS})")
    p.add_argument("--data", help="root of the real datasets: figures are made on them instead of synthetic data")
    p.add_argument("--samples", default=DEFAULT_SAMPLES, help=f"images for the method pages (default: {DEFAULT_SAMPLES})")
    p.add_argument("--methods-only", action="store_true", help="write the method pages only; keep the figure pages")
    p.add_argument("--figure", action="append", metavar="SLUG",
                   help="regenerate only this figure page (repeat); " + ", ".join(f.slug for f in FIGURES))
    p.set_defaults(func=cmd_gallery)

    p = subparsers.add_parser("misclassified", help="grid of misclassified images titled Predicted / Actual, with CAMs")
    p.add_argument("--model", default=DEMO_MODEL, help=f"registered model (default: {DEMO_MODEL})")
    p.add_argument("--checkpoint", help="an xviz checkpoint or run folder (overrides --model)")
    p.add_argument("--weights", default="DEFAULT", help="DEFAULT (pretrained), none (random) or a weights PATH")
    p.add_argument("--dataset", default="synthetic", help="registered dataset (default: synthetic)")
    p.add_argument("--data", help="the dataset's folder")
    p.add_argument("--dataset-options", metavar="A=1,B=2", help="e.g. size=1000,seed=2 for synthetic")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, help="look at the first N images only")
    p.add_argument("--method", default="gradcampp", help="the map drawn on each image (default: gradcampp)")
    p.add_argument("--layer", help="target layer (default: the model's)")
    p.add_argument("--count", type=int, default=12, help="how many mistakes to draw (default: 12)")
    p.add_argument("--columns", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--cmap", default="jet")
    p.add_argument("--out", default="misclassified.png", help="the figure (default: misclassified.png)")
    p.set_defaults(func=cmd_misclassified)
