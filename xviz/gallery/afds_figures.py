"""The AFDS document's figures (Wang et al. 2020, "Pay Attention to Features, Transfer Learn Faster
CNNs") as gallery entries: the AFS gate, the datasets, the regularisers' table, accuracy against MACs.

Offline, everything runs on the synthetic part dataset: a plain ResNet-18 (the ``afds-synthetic-source``
recipe) is the source network; the target runs are gated ResNet-18s (d = 0.5) trained from it for 2
short epochs on 480 images the source never saw (seed 1), one per regulariser. With ``--data ROOT``
the runs follow the paper's code (``afds-stanford-dogs``: ResNet-101, Stanford Dogs, 224 px).
"""

from __future__ import annotations

from xviz.gallery.figure_types import Figure, Setting, Step

REGULARISERS = ("none", "l2-sp", "fea-map", "afd")
# fea-map's penalty is the squared distance of whole feature maps: with the others' lambda (0.01) the
# gated target's first steps diverge, so it gets a weight that makes it comparable to the loss
LAMBDAS = {"fea-map": "1e-5"}
AFDS_DATASETS = ("caltech256", "stanford_dogs", "mit_indoor67", "cub200", "food101")


def _source(s: Setting) -> Step:
    run = f"{s.runs}/afds-synthetic-source"
    return Step(["train", "--recipe", "afds-synthetic-source", "--out", run], run)


def _reg_runs(s: Setting) -> list[Step]:
    if s.data:
        return [Step(["train", "--recipe", "afds-stanford-dogs", "--data", s.data, "--reg", reg,
                      "--out", f"{s.runs}/afds-dogs-{reg}"], f"{s.runs}/afds-dogs-{reg}") for reg in REGULARISERS]
    source = _source(s)
    return [source] + [Step(["train", "--recipe", "afds-synthetic", "--weights", f"{source.run}/best.pt", "--reg", reg,
                             *(["--reg-lambda", LAMBDAS[reg]] if reg in LAMBDAS else []),
                             "--dataset-options", "size=480,seed=1", "--epochs", "2", "--out", f"{s.runs}/afds-reg-{reg}"],
                            f"{s.runs}/afds-reg-{reg}") for reg in REGULARISERS]


def _trained(s: Setting) -> list[str]:
    return [step.run for step in _reg_runs(s) if step.run and "source" not in step.run]


def _compare_steps(s: Setting) -> list[Step]:
    return [*_reg_runs(s), Step(["afs-compare", *_trained(s), "--limit", "240", "--out", s.page])]


def _sweep_steps(s: Setting) -> list[Step]:
    afd = _trained(s)[-1]
    return [*[st for st in _reg_runs(s) if st.run == afd or "source" in st.run],
            Step(["afs-sweep", "--checkpoint", afd, "--ratios", "0.25,0.5,1", "--thres-m", "0.5,1",
                  "--limit", "240", "--out", s.page])]


def _mosaic_steps(s: Setting) -> list[Step]:
    names = ",".join(("synthetic", "cub200")) if s.data else "synthetic"
    return [Step(["datasets", "--mosaic", s.page, "--dataset", names, *(["--data", s.data] if s.data else [])])]


AFDS_FIGURES: list[Figure] = [
    Figure(
        "afds-gate", "AFDS: an AFS gate",
        "One attention feature selection (AFS) gate, drawn from the modules of a gated ResNet-18 "
        "(`afs_resnet18`, d = 0.5) by `xviz afs-diagram`: every label (the layer names, channel counts, "
        "the predictor's shape, how many channels winner-take-all keeps, the s and m masks) is read from the "
        "network, so the picture follows the code.",
        lambda s: [Step(["afs-diagram", "--model", "afs_resnet18", "--ratio", "0.5", "--out", f"{s.page}/afs_gate.png"])],
        lambda s: ["afs_gate.png"], commands=("afs-diagram",),
        source="AFDS: overview of an AFS gate (conv, BN, predictor, winner-take-all, s and m masks)",
        reproduction="Same parts and order as the paper's overview (conv, BN, the predictor on the pooled input, "
                     "winner-take-all, the s and m masks); drawn as boxes and arrows rather than the paper's "
                     "artwork, for the first gate of a ResNet-18 (the paper draws a generic layer).",
    ),
    Figure(
        "afds-datasets", "AFDS: sample images of the datasets",
        "Random images (seed 0) of each dataset with their classes, from `xviz datasets --mosaic`. The AFDS "
        "document's datasets (Caltech-256, Stanford Dogs, MIT Indoor 67, CUB-200-2011, Food-101) are not "
        "shipped: offline only the synthetic dataset is drawn. With the files, `xviz datasets --mosaic DIR "
        "--dataset stanford_dogs --data DOGS_ROOT` draws each (one root per dataset, see "
        "[datasets](../../datasets.md)).",
        _mosaic_steps, lambda s: ["mosaic_synthetic.png", *(["mosaic_cub200.png"] if s.data else [])],
        source="AFDS: sample images of the datasets",
        reproduction="The synthetic dataset's mosaic only; the five real datasets need their files.",
    ),
    Figure(
        "afds-regularisers", "AFDS: accuracy and MACs across regularisers",
        "The document's results table: one target run per regulariser (`--reg none`, `l2-sp`, `fea-map`, "
        "`afd`; lambda 0.01, fea-map 1e-5), all gated ResNet-18s keeping d = 0.5 of each layer's channels, "
        "trained from the same source network; then `xviz afs-compare` measures each run's test accuracy and MACs, and again after "
        "`afs-update` (thresholds 0.5) removes the channels the gates rarely value.",
        _compare_steps, lambda s: ["afs_compare.png"], commands=("afs-compare",), tables=("afs_compare.csv",),
        source="AFDS: results across regularisers (accuracy and MACs)",
        reproduction="Same columns as the document (regulariser, accuracy, MACs); a ResNet-18 fine-tuned for 2 "
                     "short epochs on 480 synthetic images instead of ResNet-101 on Stanford Dogs and the other "
                     "datasets, so the differences between regularisers are small and partly noise: it shows "
                     "the measurement, not the paper's ranking.",
    ),
    Figure(
        "afds-sweep", "AFDS: accuracy against MACs",
        "The AFD-regularised run of the table, measured by `xviz afs-sweep` as the keep ratio d of every gate "
        "varies (the network trained at d = 0.5; masks all 1), and as the threshold on m varies (`afs-update` "
        "at the trained d): each point is the test accuracy and the MACs per image.",
        _sweep_steps, lambda s: ["accuracy_macs.png"], commands=("afs-sweep",), tables=("sweep.csv",),
        source="AFDS: accuracy against MACs as the keep ratio d and the thresholds vary",
        reproduction="Same axes as the document (accuracy against MACs); the paper trains one network per d, "
                     "here one network trained at d = 0.5 (2 short epochs, synthetic data) is evaluated at each d "
                     "and each m threshold, so it loses accuracy away from the d it was trained at, even at d = 1.",
    ),
]
