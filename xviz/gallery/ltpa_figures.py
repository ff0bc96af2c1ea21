"""The gallery's figures of the Learn-to-Pay-Attention documents: the architecture, the training
curves of the attention network and the images it gets wrong with what each attention layer looked at.
Gathered into ``FIGURES`` by :mod:`xviz.gallery.figures`."""

from __future__ import annotations

from xviz.gallery.figure_types import Figure, Setting, Step


def attention_run(s: Setting) -> list[Step]:
    """The attention network's training runs: the synthetic recipe, or CIFAR-100 then CUB with ``--data``."""
    if s.data:
        before = f"{s.runs}/attn-before-cifar100"
        return [Step(["train", "--recipe", "attn-vgg-before-cifar100", "--data", s.data, "--out", before], before),
                Step(["train", "--recipe", "attn-vgg-cub-freeze-then-unfreeze", "--weights", f"{before}/best.pt",
                      "--data", s.data, "--out", f"{s.runs}/attn-cub"], f"{s.runs}/attn-cub")]
    return [Step(["train", "--recipe", "attn-vgg-synthetic", "--out", f"{s.runs}/attn-synthetic"],
                 f"{s.runs}/attn-synthetic")]


def _architecture_steps(s: Setting) -> list[Step]:
    return [Step(["model-diagram", "--model", "attn_vgg", "--weights", "none", "--title",
                  "attn_vgg (VGG-att3-concat-pc, attention before pooling): 32×32 CIFAR-100 input, 100 classes",
                  "--out", f"{s.page}/attn_vgg.png"])]


def _curves_steps(s: Setting) -> list[Step]:
    runs = attention_run(s)
    first = runs[0].run
    title = "attn_vgg on CIFAR-100" if s.data else "attn_vgg (width 1/8, 64 px) on the synthetic part dataset"
    return [*runs[:1], Step(["plot-history", first, "--label", "attn_vgg (attention before pooling)", "--panels",
                             "train_loss,test_acc", "--title", title, "--out", f"{s.page}/attn_curves.png"])]


def _hard_steps(s: Setting) -> list[Step]:
    runs = attention_run(s)
    data = ["--dataset", "cub200", "--data", s.data] if s.data else \
        ["--dataset", "synthetic", "--dataset-options", "size=600,seed=2"]
    return [*runs, Step(["misclassified", "--checkpoint", runs[-1].run, *data, "--method", "attention",
                         "--count", "4", "--out", f"{s.page}/attention_mistakes.png"])]


_REAL = ("With `--data ROOT` (CIFAR-100 and CUB-200-2011 under ROOT): `xviz gallery --data ROOT --figure {slug}` "
         "trains the recipes named in the commands on the real data instead.")

FIGURES: list[Figure] = [
    Figure(
        "ltpa-architecture", "Learn to Pay Attention: the attention VGG",
        "The network of the attention figures, drawn by `xviz model-diagram` from the module itself (a box per "
        "child module and per tensor function its forward calls, an arrow per tensor): the local features of "
        "`cb3` (projected to 512 channels), `cb4` and `cb5` are each scored against the global feature `g` "
        "(`dense`) by an attention block (orange); the classifier reads the three attended features "
        "concatenated.",
        _architecture_steps, lambda s: ["attn_vgg.png"], commands=("model-diagram",),
        source="Learn to Pay Attention (Jetley et al. 2018), Figure 2: the attention architecture",
        reproduction="Drawn from the code, no data needed: the paper's network at full width for 32×32 CIFAR-100 "
                     "inputs. Matches: the three attention estimators on l1 (after a 1×1 projection), l2, l3 and "
                     "the global feature g, the concatenation before the classifier. Differs: a box diagram of "
                     "the modules, not the paper's drawing; max-pooling shows as a function box.",
    ),
    Figure(
        "ltpa-curves", "Learn to Pay Attention: training curves",
        "Training loss and test accuracy per epoch of the attention network (attention before pooling), the "
        "curves the source document shows for its CIFAR-100 run.",
        _curves_steps, lambda s: ["attn_curves.png"], commands=("plot-history",),
        source="Learn to Pay Attention notes: train loss and test accuracy of the attention VGG on CIFAR-100",
        reproduction="Offline: the `attn-vgg-synthetic` recipe (width 1/8, 64 px, 12 epochs) on the synthetic "
                     "part dataset, the same run as the attention-layer overlays. Matches: the panels (train loss, "
                     "test accuracy per epoch) and the model family. Differs: the data (6 synthetic classes, "
                     "not CIFAR-100's 100), the width and the length (12 epochs, not 300), so the numbers are not "
                     "the document's (about 80 % top-1 on CIFAR-100). " + _REAL.format(slug="ltpa-curves"),
    ),
    Figure(
        "ltpa-hard-images", "Learn to Pay Attention: images the attention net gets wrong",
        "Test images the attention network misclassifies, titled *Predicted / Actual*, each followed by the map "
        "of each of its three attention layers: what the network looked at when it went wrong.",
        _hard_steps, lambda s: ["attention_mistakes.png"], methods=("attention",), commands=("misclassified",),
        source="Learn to Pay Attention on CUB-200-2011 (\"CUB is hard\"): misclassified birds with the attention "
               "of each layer",
        reproduction="Offline: the synthetic attention run on unseen synthetic images (seed 2). Matches: the "
                     "layout (image, then one attention overlay per layer, Predicted / Actual). Differs: the "
                     "document's model is the CIFAR-100 network fine-tuned on CUB-200-2011 birds (200 species); "
                     "here the mistakes are between 6 synthetic creatures, so they are few and of another kind. "
                     + _REAL.format(slug="ltpa-hard-images"),
    ),
]
