"""``xviz lr-sweep``: the same short training run at several learning rates, loss against step
(:mod:`xviz.train.lr_sweep`)."""

from __future__ import annotations

from xviz import hookimpl
from xviz.console import png_path
from xviz.errors import XvizError

EXAMPLES = """examples:
  xviz lr-sweep --model xviz-demo --dataset synthetic --lrs 0.0001,0.01,1 --labels "too small,good,too large"
  xviz lr-sweep --recipe cub-unfrozen --data ~/data --lrs 1e-5,1e-3,0.3 --steps 200 --out lr_sweep.png
"""


def _numbers(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise XvizError(f"`--lrs {text}` must be comma-separated numbers, e.g. --lrs 0.0001,0.01,1") from None


def cmd_lr_sweep(args) -> int:
    from xviz.commands.train import config_from_args
    from xviz.models import torch_device
    from xviz.train.lr_sweep import lr_sweep, plot_lr_sweep

    out = png_path(args.out)
    lrs = _numbers(args.lrs)
    labels = [x.strip() for x in args.labels.split(",")] if args.labels else []
    if labels and len(labels) != len(lrs):
        raise XvizError(f"`--labels` names {len(labels)} rate(s) and `--lrs` gives {len(lrs)}: give one label per rate")
    cfg = config_from_args(args)
    device = torch_device(cfg.device)
    runs = lr_sweep(cfg, lrs, args.steps, pm=args.pm, device=device)
    title = args.title or f"{cfg.model} on {cfg.dataset}: training loss at {len(lrs)} learning rates"
    plot_lr_sweep(runs, out, labels, title)
    for run in runs:
        end = "diverged" if run.diverged else f"{run.losses[0]:.3f} -> {run.losses[-1]:.3f}"
        print(f"lr {run.lr:g}: {len(run.losses)} steps, loss {end}")
    print(f"wrote {out}")
    return 0


@hookimpl
def xviz_register_commands(subparsers):
    import argparse

    from xviz.commands.train import _train_flags

    p = subparsers.add_parser("lr-sweep", help="the same short run at several learning rates: loss against step",
                              epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", help="a bundled recipe name (`xviz recipes`) or a .toml file; flags override it")
    _train_flags(p)
    p.add_argument("--lrs", required=True, metavar="A,B,C", help="the constant learning rates to compare")
    p.add_argument("--labels", metavar="A,B,C", help="a label per rate, e.g. \"too small,good,too large\"")
    p.add_argument("--steps", type=int, default=100, help="training steps per rate (default: 100)")
    p.add_argument("--title")
    p.set_defaults(func=cmd_lr_sweep, out="lr_sweep.png")
