"""A user's own small model and data for the multi-process tests (tests/test_train.py).

Run by ``torchrun --nproc_per_node 2 tests/ddp_runs.py OUT``: every rank trains the scenarios below in one
gloo process group and writes what it saw to ``OUT/<scenario>-rank<R>.json``; the test compares them with
one-process runs of the same settings (``config(...)`` and ``plugin_manager()`` here).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

import xviz
from xviz.datasets import DatasetSpec
from xviz.images import Preprocessing
from xviz.models import ModelSpec

CLASSES = ("a", "b", "c")
SIZES = {"train": 16, "test": 13}  # the test split is not a multiple of the process count
PRE = Preprocessing(None, None, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


class Dots(torch.utils.data.Dataset):
    """8x8 images whose class is the brightest of three quarters; ``size`` images per split."""

    classes = list(CLASSES)

    def __init__(self, split, transform, size=None, missing_on_rank=None):
        import torch.distributed as dist

        if missing_on_rank is not None and dist.get_rank() == missing_on_rank:
            raise xviz.XvizError(f"the dots images are missing on this machine (rank {missing_on_rank})")
        self.n, self.transform = SIZES[split] if size is None else size, transform
        self.seed = 0 if split == "train" else 1

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        rng = np.random.default_rng([self.seed, index])
        label = index % len(CLASSES)
        pixels = rng.integers(0, 120, (8, 8, 3), dtype=np.uint8)
        pixels[(label // 2) * 4:(label // 2) * 4 + 4, (label % 2) * 4:(label % 2) * 4 + 4] += 100
        return self.transform(Image.fromarray(pixels)), label


class Tiny(nn.Module):
    """conv -> [BatchNorm2d] -> ReLU -> pool -> linear [-> BatchNorm1d -> linear]; counts test images."""

    def __init__(self, num_classes, norm="none"):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), *([nn.BatchNorm2d(4)] if norm != "none" else []),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        head = [nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, num_classes)] if norm == "head" \
            else [nn.Linear(16, num_classes)]
        self.fc = nn.Sequential(*head)
        self.tested = 0

    def forward(self, x):
        if not self.training:
            self.tested += len(x)
        return self.fc(self.features(x))


BUILT: list[Tiny] = []


class UserPlugin:
    @xviz.hookimpl
    def xviz_register_models(self):
        def build(num_classes, norm="none"):
            BUILT.append(Tiny(num_classes, norm))
            return BUILT[-1]

        return [ModelSpec("tiny-user", build, PRE, CLASSES)]

    @xviz.hookimpl
    def xviz_register_datasets(self):
        return [DatasetSpec("dots", lambda split, root=None, transform=None, **o: Dots(split, transform, **o),
                            CLASSES, PRE, augment=())]


def plugin_manager():
    from xviz.registry import get_plugin_manager

    pm = get_plugin_manager(entrypoints=False)
    pm.register(UserPlugin(), name="ddp-user")
    return pm


def config(out, **overrides):
    from xviz.train import TrainConfig

    values = dict(model="tiny-user", dataset="dots", epochs=2, batch_size=4, lr=0.2, optimizer="sgd",
                  scheduler="cosine", weight_decay=1e-3, augment=[], device="cpu", out=str(out))
    values.update(overrides)
    return TrainConfig(**values).validate()


SCENARIOS = {  # name -> settings (per process; the one-process reference doubles batch_size)
    "plain": {},
    "sync-bn": {"model_options": {"norm": "conv"}, "sync_bn": True},
    "lonely": {"model_options": {"norm": "head"}, "dataset_options": {"size": 18}, "batch_size": 8},
}


def main(out: Path) -> int:
    import torch.distributed as dist

    from xviz.cli import main as xviz_main
    from xviz.train import train

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for name, settings in SCENARIOS.items():
        print(f"--- {name}" if rank == 0 else "", flush=True)
        result = train(config(out / name, **settings), pm=plugin_manager(), log=print)
        model = BUILT[-1]
        record = {"tested": model.tested, "best_acc": result.best_acc, "history": result.history, "main": result.main,
                  "buffers": {k: v.tolist() for k, v in model.state_dict().items() if "running" in k}}
        (out / f"{name}-rank{rank}.json").write_text(json.dumps(record))
    try:  # a mistake met by one rank alone: said by that rank, every rank stops
        train(config(out / "one-rank", dataset_options={"missing_on_rank": 1}), pm=plugin_manager(), log=print)
    except (xviz.XvizError, SystemExit) as exc:
        said = str(exc) if isinstance(exc, xviz.XvizError) else f"exit {exc.code}"
        (out / f"one-rank-rank{rank}.json").write_text(json.dumps(said))
    return xviz_main(["train", "--model", "tiny-user", "--dataset", "dots", "--dataset-options", "size=0",
                      "--device", "cpu", "--out", str(out / "empty")], pm=plugin_manager())


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
