"""Attention extraction costs one forward pass: xviz ``attention`` against the plain forward.

Side by side in one run, for AttnVGG (attention before and after pooling) at CIFAR size: the plain
``model(x)`` under ``torch.no_grad()``, and ``explain_tensors(model, x, ["attention"])`` (the same
forward with the attention blocks observed, maps upsampled and normalised into Explanations).

    python benchmarks/attention_speed.py                 # batch 1 and 64, 32x32, median of 5
"""

from __future__ import annotations

import argparse

import torch

from xviz.explainer import explain_tensors
from xviz.registry import get_plugin_manager
from xviz_attention.models import AttnVGG

from timing import median_time


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    pm = get_plugin_manager()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, AttnVGG (width 1) {args.size}x{args.size}, "
          f"median of {args.repeats}")
    print(f"{'variant':<8} {'batch':>5} {'forward ms':>11} {'attention ms':>13} {'ratio':>6}")
    for attention in ("before", "after"):
        torch.manual_seed(0)
        model = AttnVGG(100, attention, input_size=args.size).eval()
        for batch in args.batches:
            x = torch.randn(batch, 3, args.size, args.size)

            def plain():
                with torch.no_grad():
                    model(x)

            base = median_time(plain, args.repeats, warmup=True)
            ours = median_time(lambda: explain_tensors(model, x, ["attention"], pm=pm), args.repeats, warmup=True)
            print(f"{attention:<8} {batch:>5} {1000 * base:>11.1f} {1000 * ours:>13.1f} {ours / base:>6.3f}", flush=True)


if __name__ == "__main__":
    main()
