"""Training throughput, side by side in one run: ``xviz train`` against a minimal hand-written loop.

Same model (CIFAR ResNet-18), same data (synthetic part images at 32x32), same batch, optimiser and
schedule. Prints images per second of each and the ratio; on CUDA it also runs xviz without mixed
precision and channels_last to show what they bring.

    python benchmarks/train_speed.py                     # 1 epoch of 256 images, batch 64, 3 repeats
    python benchmarks/train_speed.py --images 4096 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from xviz.train import TrainConfig, train
from xviz.train.loop import build_data


def config(args, out, **overrides) -> TrainConfig:
    values = dict(model="cifar_resnet18", dataset="synthetic", dataset_options={"size": args.images, "image_size": 32},
                  epochs=1, batch_size=args.batch, lr=0.05, scheduler="cosine", augment=["flip"], out=out,
                  device=args.device)
    values.update(overrides)
    return TrainConfig(**values).validate()


def hand_written(args) -> float:
    """The minimal loop: SGD + cosine, forward, loss, backward, step; then one evaluation pass."""
    from xviz import registry

    cfg = config(args, "unused")
    train_set, test_set, classes, _ = build_data(cfg, _pm())
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = registry.models()["cifar_resnet18"].build(len(classes)).to(device)
    loader = DataLoader(train_set, batch_size=args.batch, shuffle=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, len(loader))
    start = time.perf_counter()
    model.train()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        for x, y in DataLoader(test_set, batch_size=max(args.batch, 128)):
            model(x.to(device)).argmax(1).eq(y.to(device)).sum().item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _pm():
    from xviz.registry import default_plugin_manager

    return default_plugin_manager()


def with_xviz(args, **overrides) -> float:
    with tempfile.TemporaryDirectory() as out:
        cfg = config(args, out, **overrides)
        start = time.perf_counter()
        train(cfg, log=lambda *a: None)
        return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    runs = {"hand-written loop": lambda: hand_written(args), "xviz train": lambda: with_xviz(args)}
    if args.device == "cuda":
        runs["xviz train, no AMP / channels_last"] = lambda: with_xviz(args, amp="off", channels_last="off")
    times = {name: [] for name in runs}
    for name, fn in runs.items():
        fn()  # warm-up
    for _ in range(args.repeats):
        for name, fn in runs.items():
            times[name].append(fn())
    images = args.images * 2  # one epoch of training images plus as many test images
    base = statistics.median(times["hand-written loop"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, cifar_resnet18 32x32, "
          f"batch {args.batch}, {args.images} train + {args.images} test images, median of {args.repeats}")
    print("(xviz includes writing its checkpoints and history every epoch)")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"{name:<38} {images / t:>8.1f} img/s   {t / base:>5.3f} x the hand-written time")


if __name__ == "__main__":
    main()
