"""The gallery's figure pages, as data: each documented figure is the list of ``xviz`` commands that
draw it. Add an entry to :data:`FIGURES` and it gets its page."""

from __future__ import annotations

from pathlib import Path

from xviz.gallery.figure_types import (DEFAULT_RUNS, DEFAULT_SAMPLES, DEMO_MODEL, PANEL_SAMPLE,  # noqa: F401
                                       Figure, Setting, Step)
from xviz.gallery.figure_types import pick_images as _pick_images
from xviz.gallery import afds_figures, finetune_figures, ltpa_figures
from xviz.gallery.ltpa_figures import attention_run as _attention_run

# the four attempts of the source documents' CUB experiments on a transfer proxy: the demo model's
# weights (learnt on 64-px synthetic images) moved to a target task of 32-px images (seed 1: images it
# never saw), where its frozen features plateau and training them helps, as ImageNet features on CUB
_SYNTHETIC = ["--model", DEMO_MODEL, "--dataset", "synthetic", "--dataset-options", "size=600,seed=1",
              "--image-size", "32", "--epochs", "8", "--lr", "0.02", "--batch-size", "32"]
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
    title = "ResNet-50 on CUB-200-2011: three attempts" if s.data else \
        "xviz-demo moved from 64-px to 32-px synthetic images: four attempts"
    return [*_attempt_runs(s), Step(["plot-history", *runs, "--panels", "train_acc,train_loss,test_acc",
                                     "--title", title, "--out", f"{s.page}/attempts.png"])]


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
    return [Step(["lr-find", *args, "--plot", f"{s.page}/lr_find.png", "--schedule-plot", f"{s.page}/lr_schedule.png"])]


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
        source="Learn to Pay Attention (Jetley et al. 2018), Figure 3: attention maps of each layer",
        reproduction="Offline: the `attn-vgg-synthetic` recipe (width 1/8, 64 px, 12 epochs) on the synthetic part "
                     "dataset, whose part masks allow the mass-on-part table. Matches: the model (attention before "
                     "pooling, pc compatibility, softmax), one overlay per attention layer. Differs: synthetic "
                     "creatures instead of CIFAR-100 / CUB images. With `--data ROOT` the CIFAR-100 recipe and its "
                     "CUB fine-tuning run instead.",
    ),
    Figure(
        "attempts", "Fine-tuning attempts: accuracy and loss curves",
        "Train and test accuracy and loss per epoch for several fine-tuning attempts, one colour per "
        "attempt, as the source documents compared their CUB-200-2011 runs: from scratch, and from a "
        "pretrained network whose transferred layers stay frozen, all train, or are frozen for the first "
        "epochs and then unfrozen.",
        _attempts_steps, lambda s: ["attempts.png"], commands=("plot-history",),
        source="Fine-tuning on CUB-200-2011 notes: the attempts comparison (train accuracy, train loss, test "
               "accuracy, one legend)",
        reproduction="Offline: a transfer proxy. The demo model's convolutions, learnt on 64-px synthetic images, "
                     "are moved to a target task of 32-px synthetic images (600 per split), where the creatures' "
                     "parts are half the size the features were learnt for. Matches: the panels and the shared "
                     "legend; the attempts (from scratch, frozen, unfrozen, frozen for 3 epochs then unfrozen); "
                     "the frozen features plateau and the frozen-then-unfrozen attempt improves after "
                     "unfreezing. Differs: 8 epochs instead of about 100, 6 classes instead of 200, a small CNN "
                     "instead of ResNet-50 / the attention VGG; here training every layer from the start ends "
                     "highest, where the document's best attempt was freeze-then-unfreeze. With `--data ROOT` "
                     "the three CUB recipes run.",
    ),
    Figure(
        "gradcampp-bird", "GradCAM++ on a bird",
        "GradCAM++ of the best attempt (frozen, then unfrozen) on a bird: on the synthetic dataset the "
        "bird is the `winged` creature, whose wing is the only part that tells it from the other "
        "classes; with `--data` it is a CUB-200-2011 test image.",
        _bird_steps, _bird_images, methods=("gradcampp",),
        source="ResNet-18 / fine-tuning notes: GradCAM++ of the best fine-tuned model on a bird",
        reproduction="Offline: the freeze-then-unfreeze attempt of the transfer proxy (32-px synthetic images) on "
                     "the `winged` sample. Matches: GradCAM++ of the best attempt, image / heatmap / overlay. "
                     "Differs: a small CNN on a synthetic creature; the document's water-bird figure on an "
                     "ImageNet VGG-16 is the `vgg16-gradcam-gradcampp` page.",
    ),
    Figure(
        "lr-finder", "Learning-rate finder",
        "The exponential learning-rate range test (fastai's): smoothed loss against the learning rate, "
        "with the suggested rate (valley) and the steepest descent marked; here for a new head on the demo "
        "model's convolutions, on synthetic images it never saw (seed 1).",
        _lr_steps, lambda s: ["lr_find.png", "lr_schedule.png"],
        source="Fine-tuning guide: the LR finder's two pictures (learning rate against iteration, loss against "
               "learning rate)",
        reproduction="Offline: a new head on the demo model's convolutions, synthetic images it never saw (seed "
                     "1). Matches: fastai's range test (exponential rate, smoothed loss, valley suggestion) and "
                     "its two plots. Differs: the model and the data. With `--data ROOT` the `cub-unfrozen` "
                     "recipe (ResNet-50 on CUB-200-2011).",
    ),
    Figure(
        "misclassified", "Misclassified images with their CAMs",
        "Test images the model gets wrong, titled *Predicted / Actual*, each with the GradCAM++ map of "
        "the predicted class: what made the model say it. The model is the *frozen* attempt (only a "
        "new head trained on the demo model's features), which makes enough mistakes to show.",
        _misclassified_steps, lambda s: ["misclassified.png"], methods=("gradcampp",), commands=("misclassified",),
        source="ResNet-18 document: the misclassified-images grid (Predicted / Actual) with CAMs",
        reproduction="Offline: the frozen attempt of the transfer proxy on unseen 32-px synthetic images (seed 2). "
                     "Matches: the grid titled Predicted / Actual, GradCAM++ of the predicted class. Differs: "
                     "12 images instead of 25; synthetic creatures instead of CIFAR-10. With `--data ROOT` the "
                     "frozen CUB attempt on CUB-200-2011.",
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
FIGURES += [*ltpa_figures.FIGURES, *finetune_figures.FIGURES, *afds_figures.AFDS_FIGURES]
