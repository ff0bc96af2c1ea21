"""The gallery's figure pages, as data: each documented figure is the list of ``xviz`` commands that
draw it. Add an entry to :data:`FIGURES` and it gets its page."""

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
    data, what matches the document and what does not. ``tables``: CSV files the commands write
    that the page keeps and links (docs may quote them, see :mod:`xviz.gallery.records`)."""

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
                  *s.sample("winged")]),
            Step(["afs-compare", f"{gated}/masked.pt", "--out", s.page])]


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
        commands=("afs-update", "afs-report", "afs-compare"), tables=("afs_compare.csv",),
    ),
]
