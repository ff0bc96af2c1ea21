"""``xviz augment-preview``: one image and its augmented versions (random seed: ``--seed``), one row per augmentation and a
last row for the whole training pipeline of a recipe (or of ``--augment``)."""

from __future__ import annotations

from pathlib import Path

from xviz import hookimpl
from xviz.console import png_path
from xviz.errors import XvizError

EXAMPLES = """examples:
  xviz augment-preview bird.jpg --recipe cifar10-resnet18-cutout --out preview.png
  xviz augment-preview bird.jpg --augment rrc,flip,jitter --rotation 30 --samples 8
"""


def preview_rows(image, cfg, names, samples: int, pm=None):
    """``[(row title, [original, augmented x samples])]``: each name of ``names`` alone, then all of
    ``cfg.augment`` (the pipeline) together, as (H, W, 3) arrays in [0, 1]. The pictures go through the
    dataset's own resize and crop with mean 0 and std 1, so they show what the network is fed, before
    normalisation (a cutout hole is black)."""
    import torch

    from xviz.images import Preprocessing
    from xviz.train.augment import resized, train_transform
    from xviz import registry

    spec = registry.lookup(registry.datasets(pm or registry.default_plugin_manager()), cfg.dataset, "dataset", "xviz datasets")
    pre = resized(spec.preprocessing, cfg.image_size)
    visible = Preprocessing(pre.resize, pre.crop, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), pre.interpolation)
    pipeline = list(spec.augment if cfg.augment is None else cfg.augment)
    original = visible.tensor(image).permute(1, 2, 0).numpy()
    rows = []
    for title, chosen in [*((n, [n]) for n in names), ("pipeline: " + (" + ".join(pipeline) or "none"), pipeline)]:
        transform = train_transform(chosen, visible, cfg)
        torch.manual_seed(cfg.seed)
        pictures = [transform(image).clamp(0, 1).permute(1, 2, 0).numpy() for _ in range(samples)]
        rows.append((title, [original, *pictures]))
    return rows


def draw_preview(rows, title: str):
    """The grid: a row per entry of ``rows``, the original first, the row's name at its left."""
    from matplotlib.figure import Figure

    ncols = len(rows[0][1])
    fig = Figure(figsize=(1.35 * ncols + 1.2, 1.35 * len(rows) + 0.6))
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    for r, (name, pictures) in enumerate(rows):
        for c, (ax, picture) in enumerate(zip(axes[r], pictures)):
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("original" if c == 0 else f"sample {c}", fontsize=9)
        axes[r][0].set_ylabel(name.replace(": ", ":\n"), fontsize=9, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def cmd_augment_preview(args) -> int:
    from xviz.commands.train import config_from_args
    from xviz.images import read_image
    from xviz.render import save_png
    from xviz.train.config import AUGMENTATIONS

    out = png_path(args.out)
    if args.samples < 1:
        raise XvizError(f"`--samples {args.samples}` must be at least 1")
    names = [n.strip() for n in args.transforms.split(",") if n.strip()] if args.transforms else list(AUGMENTATIONS)
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise XvizError(f"unknown augmentation `{unknown[0]}`: choose from {', '.join(AUGMENTATIONS)}")
    cfg = config_from_args(args)
    image = read_image(args.image)
    rows = preview_rows(image, cfg, names, args.samples, args.pm)
    source = f"recipe {args.recipe}" if args.recipe else f"dataset {cfg.dataset}"
    figure = draw_preview(rows, args.title or f"{Path(args.image).name}: augmentations ({source})")
    print(f"wrote {save_png(figure, out)} ({len(rows)} rows of {args.samples} samples)")
    return 0


@hookimpl
def xviz_register_commands(subparsers):
    import argparse

    from xviz.commands.train import _train_flags

    p = subparsers.add_parser("augment-preview", help="one image and its augmented versions, per transform and "
                              "for a recipe's whole pipeline", epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", help="the image to augment")
    p.add_argument("--recipe", help="a bundled recipe name (`xviz recipes`) or a .toml file: its augmentations "
                   "and their settings make the last row; flags override it")
    p.add_argument("--transforms", metavar="A,B", help="the single-augmentation rows (default: every built-in one)")
    p.add_argument("--samples", type=int, default=5, help="augmented versions per row (default: 5)")
    p.add_argument("--title")
    _train_flags(p)
    p.set_defaults(func=cmd_augment_preview, out="augment_preview.png")
