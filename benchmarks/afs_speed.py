"""What AFS gates really save: forward time of a gated ResNet against the plain network, beside the MACs.

For each network and keep ratio d (batch B, 224 x 224, eval, no grad, side by side: each round runs every
variant once, median of N rounds), after a mask update (``update_masks``, as ``xviz afs-update`` does) on
gates that keep the same round(d C) channels for every image (what the update finds on a trained
network whose winner-take-all choice is stable: the other channels get m = 0):
  plain      the torchvision ResNet without gates
  masked     the gated network run normally (masked channels computed, then multiplied by 0)
  sparse     the gated network computing only each image's kept channels (one image at a time, gathers)
  pruned     the masked channels removed from the weights (xviz_afs.pruning: a smaller dense network)
Times are relative to ``plain`` (below 1 is faster); ``MACs`` is the pruned network's multiply-accumulates
(gate predictors included) over the plain network's; ``max |pruned - masked|`` the largest logit difference.

    python benchmarks/afs_speed.py [--models resnet18,resnet50] [--ratios 0.9,0.5,0.25] [--batch 1] [--repeats 9]
        [--threads N] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torchvision

from xviz_afs.gates import add_gates, gates, update_masks
from xviz_afs.pruning import prune
from xviz_afs.sparse import estimate_macs, sparse_forward

from timing import interleaved_times


def calibrate(model, size: int) -> None:
    """BatchNorm statistics from one batch of noise, so random weights give finite activations in eval mode."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average: one batch sets the statistics
    with torch.no_grad():
        model.train()(torch.randn(8, 3, size, size))
    model.eval()


def stable_gates(plain, ratio: float, size: int):
    """``plain`` with gates that prefer the same round(d C) channels of each layer for every image (predictor
    bias 1 there, 0 elsewhere), and their masks set by a mask update over two noise batches."""
    gated = add_gates(copy.deepcopy(plain), ratio).eval()
    generator = torch.Generator().manual_seed(1)
    for gate in gates(gated).values():
        channels = gate.m.numel()
        preferred = torch.randperm(channels, generator=generator)[:max(1, round(ratio * channels))]
        gate.predictor.bias.data.zero_()
        gate.predictor.bias.data[preferred] = 1.0
    update_masks(gated, [torch.randn(4, 3, size, size, generator=generator) for _ in range(2)])
    return gated


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--ratios", default="0.9,0.5,0.25")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or this process's CPU time (with --threads 1: robust on a busy machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {args.size}x{args.size}, "
          f"median of {args.repeats} interleaved rounds, {args.clock} time")
    print(f"{'model':<10} {'d':>5} {'kept':>5} {'plain ms':>9} {'masked':>8} {'sparse':>8} {'pruned':>8} {'MACs':>6} "
          f"{'speed-up':>9}  max |pruned - masked|")
    for name in args.models.split(","):
        plain = torchvision.models.get_model(name, weights=None)
        calibrate(plain, args.size)
        dense = estimate_macs(plain, args.size).dense
        for ratio in (float(r) for r in args.ratios.split(",")):
            gated = stable_gates(plain, ratio, args.size)
            pruned = prune(copy.deepcopy(gated)).eval()
            kept = sum(float(g.m.sum()) for g in gates(gated).values()) / sum(g.m.numel() for g in gates(gated).values())
            with torch.no_grad():
                t = interleaved_times({"plain": lambda: plain(x), "masked": lambda: gated(x),
                                       "sparse": lambda: sparse_forward(gated, x), "pruned": lambda: pruned(x)},
                                      args.repeats, clock=clock)
                difference = float((pruned(x) - gated(x)).abs().max())
            macs = estimate_macs(pruned, args.size).gated / dense
            print(f"{name:<10} {ratio:>5.2f} {kept:>5.2f} {1000 * t['plain']:>9.1f} {t['masked'] / t['plain']:>7.2f}x "
                  f"{t['sparse'] / t['plain']:>7.2f}x {t['pruned'] / t['plain']:>7.2f}x {macs:>5.2f}x "
                  f"{t['plain'] / t['pruned']:>8.2f}x  {difference:.1e}", flush=True)


if __name__ == "__main__":
    main()
