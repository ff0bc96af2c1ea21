"""AFDS for xviz ("Pay Attention to Features, Transfer Learn Faster CNNs", Wang et al., ICLR 2020).

* models ``afs_resnet18`` ... ``afs_resnet152``: torchvision ResNets with an attention feature
  selection gate on every Conv+BN pair of the residual branches (option ``ratio``: the fraction d
  of channels each gate keeps, default 0.9); ``--weights DEFAULT`` loads the ImageNet ResNet
  through the model registry, then adds the gates;
* regularisers ``l2-sp``, ``fea-map``, ``afd`` for ``xviz train --reg``;
* method ``afs-channels``: where the channels each gate keeps fire, one map per stage;
* commands ``xviz afs-report`` (channel importance, kept fractions, top channels, MACs) and
  ``xviz afs-update`` (set the s / m masks from a pass over data; ``--prune``: remove the masked
  channels from the weights, :mod:`xviz_afs.pruning`).

Declarations only: the gates, models, regularisers, method and reports load when used.
"""

from __future__ import annotations

from xviz import hookimpl
from xviz.images import Preprocessing
from xviz.specs import MethodSpec, ModelSpec, attributes_of, lazy

IMAGENET = Preprocessing(256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DEPTHS = (18, 34, 50, 101, 152)


@hookimpl
def xviz_register_models():
    return [ModelSpec(
        name=f"afs_resnet{d}", build=lazy("xviz_afs.models:build", d), preprocessing=IMAGENET,
        class_names=tuple(str(i) for i in range(1000)),
        summary=f"ResNet-{d} with AFS gates on every Conv+BN (option ratio = kept fraction d, default 0.9)",
        pretrained=lazy("xviz_afs.models:pretrained", d), family="afds",
    ) for d in DEPTHS]


@hookimpl
def xviz_register_regularizers():
    from xviz_afs.regularizers import regularizer_specs  # only training asks: torch is loaded by then

    return regularizer_specs()


@hookimpl
def xviz_default_target_layer(model, model_name):
    return "layer4" if model_name and model_name.startswith("afs_resnet") else None


@hookimpl
def xviz_register_methods():
    return [MethodSpec("afs-channels", "xviz_afs.method:AFSChannels",
                       "AFDS: where the channels each AFS gate keeps fire, per ResNet stage (Wang et al. 2020)")]


@hookimpl
def xviz_register_commands(subparsers):
    def common(p):
        p.add_argument("--checkpoint", required=True, help="a checkpoint (or run folder) of an afs_resnet model")
        p.add_argument("--data", default="synthetic", help="dataset for the statistics (default: synthetic)")
        p.add_argument("--split", default="test")
        p.add_argument("--limit", type=int, help="use only the first N images")
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--device", default="auto")

    p = subparsers.add_parser("afs-report", help="AFDS: channel importance per gated layer, kept fractions, "
                                                 "top channels of a layer, estimated MACs saved")
    common(p)
    p.add_argument("--image", help="the image whose top channels are drawn (default: the dataset's first)")
    p.add_argument("--layer", help="the gated layer whose top channels are drawn (default: deepest >= 7x7)")
    p.add_argument("--top", type=int, default=8)
    p.add_argument("--out", default="afs-report", help="output folder")
    p.set_defaults(func=lazy("xviz_afs.report:cmd_report"))

    p = subparsers.add_parser("afs-update", help="AFDS: set the gates' s / m masks from statistics over data "
                                                 "and write the masked checkpoint")
    common(p)
    p.set_defaults(split="train")
    p.add_argument("--thres-s", type=float, default=0.5, help="s = 1 where the importance's variance exceeds it")
    p.add_argument("--thres-m", type=float, default=0.5, help="m = 1 where the mean kept importance exceeds it")
    p.add_argument("--prune", action="store_true", help="also remove the masked channels (m = 0) from the weights: "
                   "a smaller dense network that loads and explains like any checkpoint")
    p.add_argument("--out", help="where to write (default: masked.pt, or pruned.pt with --prune, beside the checkpoint)")
    p.set_defaults(func=lazy("xviz_afs.report:cmd_update"))

    p = subparsers.add_parser("afs-diagram", help="AFDS: draw one AFS gate (conv, BN, predictor, winner-take-all, "
                                                  "s / m masks) from a gated network's modules")
    p.add_argument("--model", default="afs_resnet18", help="a gated model (default: afs_resnet18)")
    p.add_argument("--checkpoint", help="draw the gate of this checkpoint instead (its masks included)")
    p.add_argument("--ratio", type=float, help="keep ratio d of --model (default: the model's)")
    p.add_argument("--layer", help="the gated conv (default: the first)")
    p.add_argument("--out", default="afs_gate.png", help="the PNG to write")
    p.set_defaults(func=lazy("xviz_afs.figures:cmd_diagram"))

    def measured(p):
        p.add_argument("--data", help="dataset to measure on (default: the one the checkpoint was trained on)")
        p.add_argument("--data-root", help="root folder of --data")
        p.add_argument("--limit", type=int, help="the masks' statistics from the first N training images (afs-sweep: "
                       "and only the first N test images)")
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--thres-s", type=float, default=0.5, help="afs-update's variance threshold for s")

    p = subparsers.add_parser("afs-compare", help="AFDS: test accuracy and MACs of gated runs (e.g. one per "
                                                  "regulariser), before and after afs-update (a masked checkpoint: "
                                                  "its own masks), as a table")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders or checkpoints of gated models")
    measured(p)
    p.add_argument("--thres-m", type=float, default=0.5, help="afs-update's threshold for m")
    p.add_argument("--out", default="afs-compare", help="output folder (afs_compare.png, afs_compare.csv)")
    p.set_defaults(func=lazy("xviz_afs.figures:cmd_compare"))

    p = subparsers.add_parser("afs-sweep", help="AFDS: accuracy against MACs as the keep ratio d and the m "
                                                "threshold vary, on one trained gated network")
    p.add_argument("--checkpoint", required=True, help="a run folder or checkpoint of a gated model")
    measured(p)
    p.add_argument("--ratios", default="0.25,0.5,0.75,1", help="keep ratios d (default: 0.25,0.5,0.75,1)")
    p.add_argument("--thres-m", default="0.5,1,1.5", help="m thresholds (default: 0.5,1,1.5)")
    p.add_argument("--out", default="afs-sweep", help="output folder (accuracy_macs.png, sweep.csv)")
    p.set_defaults(func=lazy("xviz_afs.figures:cmd_sweep"))


__getattr__ = attributes_of("xviz_afs.models")  # e.g. xviz_afs.build(18, 10), imported on first use
