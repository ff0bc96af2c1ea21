"""The fast path against the fp32 floor, side by side: seconds per batch of GradCAM.

    .venv/bin/python benchmarks/fast_speed.py > benchmarks/fast_speed_cpu.txt

For each model (random weights, 224 x 224, ``--batch`` images): the fp32 floor (a hand-written forward +
``autograd.grad`` to the target layer, contiguous fp32, eager), then ``explain_tensors`` in fp32,
``fast=True`` (channels_last), ``fast="bf16"`` (channels_last + bf16 autocast) and, with ``--compile``,
``fast=True, compile=True``. The modes run interleaved, ``--repeats`` rounds, so a load from other users
falls on all; each cell is the median, and the ratio is the floor's time over the mode's (> 1: faster
than the floor). Also the largest difference of the GradCAM maps from fp32 xviz's.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch


def floor(model, layer, x):
    captured = {}

    def hook(module, args, output):
        captured["a"] = output.detach().requires_grad_(True)
        return captured["a"]

    handle = layer.register_forward_hook(hook)
    try:
        logits = model(x)
        scores = logits.gather(1, logits.detach().argmax(1, keepdim=True))
        torch.autograd.grad(scores.sum(), captured["a"])
    finally:
        handle.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet18,resnet50,densenet121,vgg16")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time fast=True, compile=True")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    warnings.filterwarnings("ignore")
    from xviz.capture import find_layer, preserved_state
    from xviz.explainer import explain_tensors
    from xviz.models import load_model

    device = torch.device(args.device)
    modes = {"xviz fp32": dict(), "fast": dict(fast=True), "fast bf16": dict(fast="bf16")}
    if args.compile:
        modes["fast+compile"] = dict(fast=True, compile=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}, device {device}; load average {os.getloadavg()[0]:.1f}")
    print(f"GradCAM, batch {args.batch} at 224 x 224, random weights; seconds per batch (median of {args.repeats}, "
          "interleaved); ratio = floor / mode; max |map - fp32 map|")
    print(f"{'model':12s} {'floor s':>8s} " + " ".join(f"{m + ' s':>14s} {'ratio':>6s} {'diff':>7s}" for m in modes))
    for name in args.models.split(","):
        torch.manual_seed(0)
        loaded = load_model(name, weights="none")
        loaded.module.to(device)
        x = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
        reference = explain_tensors(loaded, x, ["gradcam"])[0]
        layer_name = reference.layer
        runs = {"floor": [], **{m: [] for m in modes}}
        diffs = {}
        with preserved_state(loaded.module):
            for m, options in modes.items():  # warm-up (and compilation)
                diffs[m] = float(abs(explain_tensors(loaded, x, ["gradcam"], **options)[0].maps - reference.maps).max())
            floor(loaded.module, find_layer(loaded.module, layer_name), x)
            for _ in range(args.repeats):
                start = time.perf_counter()
                floor(loaded.module, find_layer(loaded.module, layer_name), x)
                runs["floor"].append(time.perf_counter() - start)
                for m, options in modes.items():
                    start = time.perf_counter()
                    explain_tensors(loaded, x, ["gradcam"], layer=layer_name, **options)
                    runs[m].append(time.perf_counter() - start)
        med = {k: statistics.median(v) for k, v in runs.items()}
        print(f"{name:12s} {med['floor']:8.3f} " + " ".join(
            f"{med[m]:14.3f} {med['floor'] / med[m]:6.2f} {diffs[m]:7.1e}" for m in modes), flush=True)
    print(f"load average after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
