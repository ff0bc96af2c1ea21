"""``xviz train``, ``recipes``, ``lr-find``, ``plot-history``: argument parsing around :mod:`xviz.train`.

The training flags are generated from :class:`xviz.train.config.TrainConfig`, one per field."""

from __future__ import annotations

import argparse
from pathlib import Path

from xviz import hookimpl
from xviz.console import table
from xviz.errors import XvizError

TRAIN_EXAMPLES = """examples:
  xviz train --recipe cifar10-resnet18-flip --out runs/flip              (a bundled recipe; `xviz recipes`)
  xviz train --model xviz-demo --dataset synthetic --epochs 15 --out runs/demo
  xviz train --dataset imagefolder --data my_images --model resnet18 --weights DEFAULT --out runs/mine
             (your own images: my_images/<class>/*.jpg; `xviz misclassified --checkpoint runs/mine --data my_images`)
  xviz train --model resnet50 --weights DEFAULT --head concat --dataset cub200 --data ~/data \\
             --unfreeze head=1,all=51 --lr-mult layer4=0.1 --epochs 80 --out runs/cub
  xviz train --resume runs/cub                                          (continue exactly where it stopped)
  torchrun --nproc_per_node 2 -m xviz train --recipe cifar10-resnet18-flip --out runs/ddp
"""


def _train_flags(parser) -> None:
    """One flag per TrainConfig field, in the config's groups, its help the field's own (defaults None:
    the recipe's or the config's value wins; the help shows the config's default)."""
    import dataclasses

    from xviz.train.config import GROUPS, TrainConfig

    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = "none" if default in (None, [], {}) else str(default).lower() if isinstance(default, bool) else ",".join(map(str, default)) if isinstance(default, list) \
            else ",".join(f"{k}={v}" for k, v in default.items()) if isinstance(default, dict) else str(default)
        text = f.metadata.get("help", "")
        text = (text if "(default:" in text else f"{text} (default: {shown})").replace("%", "%%")
        group = groups.get(f.metadata.get("group"), parser)
        if isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif isinstance(default, (dict, list)) or f.name == "augment":
            group.add_argument(flag, default=None, metavar="A=1,B=2" if isinstance(default, dict) else "A,B",
                               help=text)
        elif isinstance(default, (int, float)) or str(f.type).startswith("int"):  # checked by the config
            group.add_argument(flag, default=None, metavar="INT" if default is None else type(default).__name__.upper(),
                               help=text)
        else:
            choices = f.metadata.get("rule", {}).get("choices")
            group.add_argument(flag, default=None, metavar="|".join(choices) if choices else f.name.upper(), help=text)


def config_from_args(args):
    """The TrainConfig of a recipe (``--recipe``) with the flags given on top."""
    import dataclasses

    from xviz.train.config import TrainConfig, make_config, parse_flag

    values = {}
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            values[f.name] = value if isinstance(value, bool) else parse_flag(f.name, value)
    return make_config(args.recipe, **values)


def cmd_train(args) -> int:
    from xviz.train import train
    from xviz.train.config import TrainConfig, parse_flag
    from xviz.train.run_folder import RunFolder

    if args.resume:
        cfg = TrainConfig(**RunFolder(args.resume).saved_config())
        if args.epochs is not None:
            cfg.epochs = parse_flag("epochs", args.epochs)
        cfg.out = args.resume
        result = train(cfg.validate(), resume=True, pm=args.pm)
    else:
        cfg = config_from_args(args)
        out = Path(cfg.out)
        if out.suffix in (".pt", ".pth"):
            raise XvizError(f"`--out {out}` names a run folder, not a checkpoint file: e.g. --out {out.with_suffix('')}")
        if out.exists() and not out.is_dir():
            raise XvizError(f"`{out}` is a file, not a folder: choose another --out")
        result = train(cfg, overwrite=args.overwrite, pm=args.pm)
    if result.main and not result.finished_before:  # once, by rank 0 of several processes
        print(f"best test accuracy {100 * result.best_acc:.2f}%; checkpoints in {result.run}/ "
              f"(best.pt, last.pt, history.json, history.csv)")
    return 0


def cmd_recipes(args) -> int:
    from xviz.train.config import RECIPES, tomllib

    rows = [[path.stem, tomllib.loads(path.read_text()).get("description", "")]
            for path in sorted(RECIPES.glob("*.toml"))]
    print(table(rows, ["recipe", "description"]))
    return 0


def cmd_lr_find(args) -> int:
    import torch

    from xviz.models import torch_device
    from xviz.train.loop import build_data, build_model
    from xviz.train.lr_finder import lr_find, plot_lr_find, plot_lr_schedule
    from xviz.train.schedules import make_optimizer

    cfg = config_from_args(args)
    device = torch_device(cfg.device)
    torch.manual_seed(cfg.seed)
    train_set, _, classes, _ = build_data(cfg, args.pm)
    model, _ = build_model(cfg, len(classes), args.pm)
    model.to(device)
    loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.workers,
                                         collate_fn=getattr(train_set, "collate_fn", None))
    result = lr_find(model, loader, make_optimizer(model, cfg), start_lr=args.start_lr, end_lr=args.end_lr,
                     num_iter=args.iterations, device=device)
    out = Path(args.plot)
    plot_lr_find(result, out, title=f"{cfg.model} on {cfg.dataset}")
    if args.schedule_plot:
        print(f"wrote {plot_lr_schedule(result, args.schedule_plot, title=f'{cfg.model} on {cfg.dataset}')}")
    print(f"suggested learning rate {result.suggestion:.3g} (valley); steepest descent at {result.steep:.3g}"
          f"{'; stopped early: the loss diverged' if result.stopped_early else ''}")
    print(f"wrote {out}")
    return 0


def cmd_plot_history(args) -> int:
    from xviz.train.history import plot_history, read_history

    runs = {}
    labels = args.label or []
    for i, source in enumerate(args.runs):
        label = labels[i] if i < len(labels) else Path(source).name or str(source)
        runs[label] = read_history(source)
    panels = [key.strip() for key in args.panels.split(",")] if args.panels else None
    out = plot_history(runs, args.out, title=args.title, panels=panels)
    print(f"wrote {out}")
    return 0


@hookimpl
def xviz_register_commands(subparsers):
    p = subparsers.add_parser("train", help="train a model; writes a run folder with checkpoints and history",
                              epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", help="a bundled recipe name (`xviz recipes`) or a .toml file; flags override it")
    p.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN exactly where it stopped")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (its checkpoints, "
                   "best.pt, last.pt, history)")
    _train_flags(p)
    p.set_defaults(func=cmd_train)

    subparsers.add_parser("recipes", help="list the bundled training recipes").set_defaults(func=cmd_recipes)

    p = subparsers.add_parser("lr-find", help="learning-rate range test: plot loss vs learning rate, suggest one")
    p.add_argument("--recipe", help="a bundled recipe name (`xviz recipes`) or a .toml file; flags override it")
    _train_flags(p)
    p.add_argument("--start-lr", type=float, default=1e-7, help="the first learning rate tried (default: 1e-7)")
    p.add_argument("--end-lr", type=float, default=10.0, help="the last learning rate tried (default: 10)")
    p.add_argument("--iterations", type=int, default=100, help="steps, the lr growing exponentially from "
                   "--start-lr to --end-lr (default: 100; stops early when the loss diverges)")
    p.add_argument("--plot", default="lr_find.png", help="where to write the plot (default: lr_find.png)")
    p.add_argument("--schedule-plot", metavar="PNG", help="also draw the learning rate against the iteration here")
    p.set_defaults(func=cmd_lr_find)

    p = subparsers.add_parser("plot-history", help="compare runs: train/test accuracy and loss per epoch")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders, history .json/.csv files or checkpoints")
    p.add_argument("--label", action="append", help="legend label per run, in order (repeat)")
    p.add_argument("--title", help="the figure's title")
    p.add_argument("--panels", metavar="A,B", help="the panels, in order: train_acc, train_loss, test_acc, test_loss "
                   "(default: all four; three leave the fourth cell to the legend)")
    p.add_argument("--out", default="history.png", help="where to write the figure (default: history.png)")
    p.set_defaults(func=cmd_plot_history)
