"""What AFS gates really save: forward time of a gated ResNet whose dropped channels are *not
computed* (xviz_afs.sparse.sparse_forward) against the plain network, beside the MACs estimate.

For each network and keep ratio d (one image at a time, 224 x 224, eval, no grad, median of N):
  plain      the torchvision ResNet without gates
  masked     the gated network run normally (dropped channels computed, then multiplied by 0)
  sparse     the gated network computing only the kept channels
Ratios are to ``plain``; ``MACs`` is the estimated gated / dense multiply-accumulates.

    python benchmarks/afs_speed.py [--models resnet18,resnet50] [--ratios 0.9,0.5,0.25] [--repeats 7]
"""

from __future__ import annotations

import argparse
import copy

import torch
import torchvision

from xviz_afs.gates import add_gates
from xviz_afs.sparse import estimate_macs, sparse_forward

from timing import median_time


def calibrate(model, size: int) -> None:
    """BatchNorm statistics from one batch of noise, so random weights give finite activations in eval mode."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average: one batch sets the statistics
    with torch.no_grad():
        model.train()(torch.randn(8, 3, size, size))
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--ratios", default="0.9,0.5,0.25")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(1, 3, args.size, args.size)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 1, {args.size}x{args.size}, "
          f"median of {args.repeats}")
    print(f"{'model':<10} {'d':>5} {'plain ms':>9} {'masked':>8} {'sparse':>8} {'MACs':>7}  sparse == masked")
    for name in args.models.split(","):
        plain = torchvision.models.get_model(name, weights=None)
        calibrate(plain, args.size)
        with torch.no_grad():
            t_plain = median_time(lambda: plain(x), args.repeats, warmup=True)
        for ratio in (float(r) for r in args.ratios.split(",")):
            gated = add_gates(copy.deepcopy(plain), ratio).eval()
            with torch.no_grad():
                t_masked = median_time(lambda: gated(x), args.repeats, warmup=True)
                t_sparse = median_time(lambda: sparse_forward(gated, x), args.repeats, warmup=True)
                same = torch.allclose(sparse_forward(gated, x), gated(x), rtol=1e-3, atol=1e-4)
            macs = estimate_macs(gated, args.size)
            print(f"{name:<10} {ratio:>5.2f} {1000 * t_plain:>9.1f} {t_masked / t_plain:>7.2f}x {t_sparse / t_plain:>7.2f}x "
                  f"{macs.gated / macs.dense:>6.2f}x  {same}")


if __name__ == "__main__":
    main()
