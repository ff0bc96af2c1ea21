"""The gallery's figures of the fine-tuning guide and the ResNet-18 document: the augmentation preview,
the learning-rate overshoot, flip against cutout, and GradCAM against GradCAM++ on a VGG-16.
Gathered into ``FIGURES`` by :mod:`xviz.gallery.figures`."""

from __future__ import annotations

from pathlib import Path

from xviz.gallery.figure_types import DEMO_MODEL, Figure, Setting, Step, pick_images

_REAL = "With `--data ROOT`: `xviz gallery --data ROOT --figure {slug}` runs the commands on the real dataset."


def _one_image(s: Setting) -> list[str]:
    return pick_images(s.data, 1) if s.data else s.sample("winged")


def _augment_steps(s: Setting) -> list[Step]:
    return [Step(["augment-preview", *_one_image(s), "--recipe", "cub-unfrozen", "--image-size", "128",
                  "--rotation", "30", "--samples", "5", "--out", f"{s.page}/augment_preview.png"])]


# a new head on the demo model's convolutions, as the lr-finder figure, every layer training
_SWEEP = ["--model", DEMO_MODEL, "--weights", "plugins/xviz_zoo/assets/xviz-demo.pt", "--transfer", "backbone",
          "--dataset", "synthetic", "--dataset-options", "size=1600,seed=1", "--batch-size", "32", "--augment", "",
          "--lrs", "0.0001,0.02,5", "--steps", "40"]


def _overshoot_steps(s: Setting) -> list[Step]:
    args = ["--recipe", "cub-unfrozen", "--data", s.data, "--lrs", "0.0001,0.01,1", "--steps", "100"] if s.data \
        else _SWEEP
    return [Step(["lr-sweep", *args, "--labels", "too small,good,too large", "--out", f"{s.page}/lr_sweep.png"])]


# the ResNet-18 document's two CIFAR-10 runs, short: a ResNet-18 is too slow for the gallery's CPU budget,
# so offline the demo CNN's convolutions are trained further on 32-px synthetic images with each recipe's
# augmentations (the transfer proxy of the attempts figure)
_FLIP_CUTOUT = ["--model", DEMO_MODEL, "--weights", "plugins/xviz_zoo/assets/xviz-demo.pt", "--transfer", "backbone",
                "--dataset", "synthetic", "--dataset-options", "size=600,seed=1", "--image-size", "32", "--epochs", "4",
                "--lr", "0.02", "--batch-size", "32", "--cutout", "8"]


def _flip_cutout_runs(s: Setting) -> list[Step]:
    if s.data:
        return [Step(["train", "--recipe", f"cifar10-resnet18-{k}", "--data", s.data, "--out", f"{s.runs}/resnet18-{k}"],
                     f"{s.runs}/resnet18-{k}") for k in ("flip", "cutout")]
    return [Step(["train", *_FLIP_CUTOUT, "--augment", aug, "--out", f"{s.runs}/demo-{k}-synthetic"],
                 f"{s.runs}/demo-{k}-synthetic") for k, aug in (("flip", "crop,flip"), ("cutout", "crop,flip,cutout"))]


def _flip_cutout_steps(s: Setting) -> list[Step]:
    runs = _flip_cutout_runs(s)
    what = "ResNet-18 on CIFAR-10" if s.data else "xviz-demo on 32-px synthetic images (a proxy)"
    return [*runs, Step(["plot-history", *(r.run for r in runs), "--label", "flip (crop + flip)", "--label",
                         "cutout (crop + flip + cutout)", "--panels", "test_acc,test_loss,train_acc,train_loss",
                         "--title", f"{what}: flip against cutout", "--out", f"{s.page}/flip_cutout.png"])]


def _vgg_steps(s: Setting) -> list[Step]:
    weights = "DEFAULT" if s.data else "none"
    return [Step(["explain", "--model", "vgg16", "--weights", weights, "--layer", "features.29", "--method",
                  "gradcam,gradcampp", "--panel", "--out", s.page, *_one_image(s)])]


def _vgg_images(s: Setting) -> list[str]:
    stem = Path(_one_image(s)[0]).stem
    return [f"{stem}_gradcam_panel.png", f"{stem}_gradcampp_panel.png"]


FIGURES: list[Figure] = [
    Figure(
        "augment-preview", "Augmentation preview",
        "One image and five random versions of it under each built-in augmentation alone, then under the whole "
        "training pipeline of the `cub-unfrozen` recipe (random resized crop and flip): what the network is fed, "
        "before normalisation.",
        _augment_steps, lambda s: ["augment_preview.png"], commands=("augment-preview",),
        source="Fine-tuning guide: the augmentation preview (an image and its augmented versions)",
        reproduction="Offline: the synthetic `winged` sample (64 px, drawn at 128 px). Matches: one image, its "
                     "versions per transform and for a recipe's pipeline. Differs: a synthetic creature, not a "
                     "photograph. " + _REAL.format(slug="augment-preview"),
    ),
    Figure(
        "lr-overshoot", "Learning rate too small, good, too large",
        "The same short training run (same start, same batches) at three constant learning rates, loss against "
        "step: too small and the loss barely moves; good and it falls; too large and it jumps about or diverges. "
        "Drawn by `xviz lr-sweep` from real runs.",
        _overshoot_steps, lambda s: ["lr_sweep.png"], commands=("lr-sweep",),
        source="Fine-tuning guide: the learning-rate overshoot illustration (loss against step for three rates)",
        reproduction="Offline: a new head on the demo CNN's convolutions (as on the LR-finder page), synthetic images it never saw, 40 steps per rate. "
                     "Matches: real runs, one curve per rate, the three behaviours. Differs: the document's "
                     "picture is a sketch of a loss surface; here the rates are real runs on small synthetic "
                     "images. " + _REAL.format(slug="lr-overshoot"),
    ),
    Figure(
        "flip-cutout", "ResNet-18: flip against cutout",
        "Test accuracy, test loss, train accuracy and train loss per epoch of the ResNet-18 document's two "
        "CIFAR-10 runs: random crop and flip, and the same plus a 16×16 cutout hole.",
        _flip_cutout_steps, lambda s: ["flip_cutout.png"], commands=("plot-history",),
        source="ResNet-18 on CIFAR-10 document: the curves of the flip run and the cutout run",
        reproduction="Offline: NOT a ResNet-18 (too slow for the gallery on CPU) and not CIFAR-10: the demo "
                     "CNN's convolutions trained further on 32-px synthetic images (600 per split, 4 epochs), once "
                     "with crop + flip and once with crop + flip + an 8×8 cutout (16×16 on 32-px CIFAR in the "
                     "document, here a quarter of the side too). Matches: the two recipes' augmentations, the four "
                     "panels, one line per run. Differs: the model, the data and the length (150 epochs, 91.75 % "
                     "and 88.96 % reported), so the gap between the runs is not the document's. "
                     + _REAL.format(slug="flip-cutout"),
    ),
    Figure(
        "vgg16-gradcam-gradcampp", "GradCAM and GradCAM++ on a VGG-16",
        "GradCAM and GradCAM++ of a VGG-16 at its last convolutional block (`features.29`), each as image, "
        "heatmap and overlay, for the top class.",
        _vgg_steps, _vgg_images, methods=("gradcam", "gradcampp"),
        source="ResNet-18 document: the water-bird figure (GradCAM++ of an ImageNet VGG-16 at features[29])",
        reproduction="Offline the ImageNet weights cannot be downloaded: this VGG-16 has RANDOM weights, so the "
                     "maps show the methods' mechanics (same layer, side by side), not what a trained network "
                     "looks at; the image is the synthetic `winged` creature, not the water bird. Matches: the "
                     "model, the layer, the two methods. " + _REAL.format(slug="vgg16-gradcam-gradcampp")
                     + " (`--weights DEFAULT` then loads the ImageNet weights when they can be downloaded.)",
    ),
]
