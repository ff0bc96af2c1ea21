"""The ``xviz`` command line: explain, methods, models, datasets, layers, plugins, train.

A user's mistake ends in one line ``xviz: error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from xviz import __version__
from xviz.errors import XvizError

EXPLAIN_EXAMPLES = """examples:
  xviz explain --model xviz-demo --method gradcampp plugins/xviz_zoo/assets/samples
  xviz explain --method gradcam,gradcampp --topk 3 cat.jpg          (resnet50, ImageNet weights)
  xviz explain --model vgg16 --layer features.29 --target "water ouzel" bird.jpg
  xviz explain --checkpoint runs/cub/best.pt --panel --out figures photos/
"""


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def writable_folder(path) -> Path:
    """``path`` as a folder that exists and can be written, or an error saying why not."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise XvizError(f"`{folder}` is a file, not a folder: choose another --out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise XvizError(f"cannot create the folder `{folder}` ({exc.strerror or exc}): choose another --out") from None
    if not os.access(folder, os.W_OK):
        raise XvizError(f"cannot write into `{folder}` (permission denied): choose another --out")
    return folder


def _split_methods(values) -> list[str]:
    return [name.strip() for v in (values or ["gradcam"]) for name in v.split(",") if name.strip()]


def cmd_explain(args) -> int:
    from collections import Counter

    import torch
    from tqdm import tqdm

    from xviz.explainer import check_targets, explain_tensors, resolve_layer, resolve_methods
    from xviz.explanation import output_name, output_stems, save_npy
    from xviz.images import list_images, read_image
    from xviz.models import load_model, torch_device
    from xviz.render import check_alpha, enlarge, get_cmap, grid, layers_figure, overlay, panel, save_png

    device = torch_device(args.device)
    methods = resolve_methods(_split_methods(args.method), args.pm)
    get_cmap(args.cmap)
    check_alpha(args.alpha)
    if args.batch_size < 1:
        raise XvizError(f"`--batch-size {args.batch_size}` must be at least 1")
    paths = list_images(args.images)
    writable_folder(args.out)
    if len(paths) == 1:
        read_image(paths[0])  # a single bad image is the whole error
    model = load_model(args.model, weights=args.weights, checkpoint=args.checkpoint, pm=args.pm).to(device)
    check_targets(args.target, args.topk, model.class_names, len(model.class_names))
    out_dir = writable_folder(args.out)
    stems = dict(zip(paths, output_stems([str(p) for p in paths])))
    one_folder = len(args.images) == 1 and Path(args.images[0]).is_dir()
    shown = {p: p.name if one_folder else str(p) for p in paths}  # the image column of the table
    layer, rows, failures = args.layer, [], []
    gallery = {m.name: ([], [], []) for m in methods}  # method -> views, heatmaps, titles for --grid
    bar = tqdm(total=len(paths), unit="img", desc="explaining", disable=len(paths) < 2, file=sys.stderr)
    for start in range(0, len(paths), args.batch_size):
        batch_paths, views = [], []
        for path in paths[start:start + args.batch_size]:
            try:
                views.append(model.preprocessing.view(read_image(path)))
                batch_paths.append(path)
            except XvizError as exc:
                failures.append(path)
                tqdm.write(f"xviz: skipped: {exc}", file=sys.stderr)
                bar.update(1)
        if not views:
            continue
        batch = torch.stack([model.preprocessing.normalize(v) for v in views])
        announce = None
        if any(m.uses_layer for m in methods) and layer is None:
            layer, how = resolve_layer(model.module, None, batch.to(device), model.name, args.pm)
            how_text = "the model's default" if how == "plugin" else "the last layer with a spatial output"
            announce = f"explaining layer `{layer}` ({how_text}; choose another with --layer)"
        explanations = explain_tensors(model, batch, methods, layer=layer, target=args.target, topk=args.topk,
                                       inputs_names=[str(p) for p in batch_paths], pm=args.pm)
        if announce:
            tqdm.write(announce, file=sys.stderr)
        per_method = Counter(e.method for e in explanations)  # methods such as `attention` give one per layer
        try:
            for i, (path, view) in enumerate(zip(batch_paths, views)):
                for method in (m for m in per_method if per_method[m] > 1):
                    layered = [e for e in explanations if e.method == method]
                    figure = layers_figure(view, [e.maps[i, 0] for e in layered], [e.layer for e in layered],
                                           f"{method}: predicted {layered[0].prediction_names[i]} "
                                           f"({layered[0].prediction_scores[i]:.1%})", args.alpha, args.cmap)
                    save_png(figure, out_dir / f"{stems[path]}_{method}_layers.png")
                for exp in explanations:
                    for k in range(exp.topk):
                        target_name = exp.target_names[i][k]
                        named = exp.layer if per_method[exp.method] > 1 else None  # not `layer`: the next batch uses it
                        base = out_dir / output_name(stems[path], exp.method, k, exp.topk, target_name, named)
                        heat = exp.maps[i, k]
                        written = save_png(enlarge(overlay(view, heat, args.alpha, args.cmap, exp.signed)), f"{base}.png")
                        if args.panel:
                            title = (f"{exp.method}: predicted {exp.prediction_names[i]} ({exp.prediction_scores[i]:.1%})"
                                     f", explaining {target_name}")
                            save_png(panel(view, heat, title, args.alpha, args.cmap, exp.signed), f"{base}_panel.png")
                        if args.grid:
                            views_, heats_, titles_ = gallery[exp.method]
                            views_.append(view)
                            heats_.append(heat)
                            titles_.append(f"{path.name}\n{target_name} ({exp.scores[i, k]:.0%})")
                        if args.save_raw:
                            save_npy(exp.raw[i, k], Path(f"{base}_raw.npy"))
                        rows.append([shown[path], exp.prediction_names[i], f"{exp.prediction_scores[i]:.3f}",
                                     f"{target_name} ({exp.scores[i, k]:.3f})", exp.method, str(written)])
                bar.update(1)
        except OSError as exc:
            raise XvizError(f"could not write into `{out_dir}` ({exc.strerror or exc}); {len(rows)} overlay(s) were "
                            "written before: free space or choose another --out") from None
    bar.close()
    if rows:
        print(_table(rows, ["image", "predicted", "prob", "explained target (prob)", "method", "overlay"]))
        print(f"wrote {len(rows)} overlay(s) to {out_dir}/")
    for method, (views_, heats_, titles_) in gallery.items():
        if views_:
            signed = next(m.signed for m in methods if m.name == method)
            figure = grid(views_, heats_, titles_, 6, args.alpha, args.cmap, signed)
            print(f"wrote a grid of {len(views_)} overlay(s) to {save_png(figure, out_dir / f'grid_{method}.png')}")
    if failures:
        print(f"xviz: error: {len(failures)} of {len(paths)} image(s) could not be read and were skipped "
              "(see the lines above)", file=sys.stderr)
        return 2
    return 0


def cmd_methods(args) -> int:
    from xviz import registry

    found = registry.registered(args.pm, "xviz_register_methods", "method")
    rows = [[name, plugin, m.summary] for name, (m, plugin) in sorted(found.items())]
    print(_table(rows, ["method", "plugin", "summary"]))
    return 0


def cmd_models(args) -> int:
    from xviz.models import model_registry

    specs = model_registry(args.pm)
    if args.classes:
        from xviz.registry import lookup

        spec = lookup(specs, args.classes, "model", "xviz models")
        for i, name in enumerate(spec.class_names):
            print(f"{i}\t{name}")
        return 0
    print(_table([[n, str(len(s.class_names)), s.summary] for n, s in sorted(specs.items())],
                 ["model", "classes", "summary"]))
    return 0


def cmd_datasets(args) -> int:
    from xviz import registry

    rows = [[n, str(len(s.class_names) or "?"), s.summary] for n, s in sorted(registry.datasets(args.pm).items())]
    print(_table(rows, ["dataset", "classes", "summary"]))
    return 0


def cmd_plugins(args) -> int:
    rows = [[i.name, i.source, i.version] for i in args.pm.infos.values()]
    print(_table(rows, ["plugin", "source", "version"]))
    return 0


def cmd_layers(args) -> int:
    import torch

    from xviz.explainer import resolve_layer
    from xviz.hooks import spatial_layers
    from xviz.models import load_model

    weights = args.weights or "none"  # names and shapes do not depend on the weights: nothing to download
    model = load_model(args.model, weights=weights, checkpoint=args.checkpoint, pm=args.pm)
    size = model.preprocessing.crop or model.preprocessing.resize or 224
    example = torch.zeros(1, 3, size, size)
    default, _ = resolve_layer(model.module, None, example, model.name, args.pm)
    rows = [[name, "x".join(map(str, shape)), "default" if name == default else ""]
            for name, shape in spatial_layers(model.module, example)]
    print(_table(rows, ["layer", f"output (C x h x w) at {size}x{size}", ""]))
    return 0


TRAIN_EXAMPLES = """examples:
  xviz train --recipe cifar10-resnet18-flip --out runs/flip              (a bundled recipe; `xviz recipes`)
  xviz train --model xviz-demo --dataset synthetic --epochs 15 --out runs/demo
  xviz train --model resnet50 --weights DEFAULT --head concat --dataset cub200 --data ~/data \\
             --unfreeze head=1,all=51 --lr-mult layer4=0.1 --epochs 80 --out runs/cub
  xviz train --resume runs/cub                                          (continue exactly where it stopped)
  torchrun --nproc_per_node 2 -m xviz train --recipe cifar10-resnet18-flip --out runs/ddp
"""


def _train_flags(parser) -> None:
    """One flag per TrainConfig field (defaults None: the recipe's or the config's value wins)."""
    import dataclasses

    from xviz.train.config import TrainConfig

    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif isinstance(default, dict) or isinstance(default, list) or f.name == "augment":
            parser.add_argument(flag, default=None, metavar="A=1,B=2" if isinstance(default, dict) else "A,B")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):  # checked by the config
            parser.add_argument(flag, default=None, metavar=type(default).__name__.upper())
        elif default is None and str(f.type).startswith("int"):  # e.g. image_size: int | None
            parser.add_argument(flag, default=None, metavar="INT")
        else:
            parser.add_argument(flag, default=None)


def _config_from_args(args):
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
        cfg = _config_from_args(args)
        out = Path(cfg.out)
        if out.suffix in (".pt", ".pth"):
            raise XvizError(f"`--out {out}` names a run folder, not a checkpoint file: e.g. --out {out.with_suffix('')}")
        if out.exists() and not out.is_dir():
            raise XvizError(f"`{out}` is a file, not a folder: choose another --out")
        result = train(cfg, overwrite=args.overwrite, pm=args.pm)
    if not result.finished_before:
        print(f"best test accuracy {100 * result.best_acc:.2f}%; checkpoints in {result.run}/ "
              f"(best.pt, last.pt, history.json, history.csv)")
    return 0


def cmd_recipes(args) -> int:
    from xviz.train.config import RECIPES, tomllib

    rows = []
    for path in sorted(RECIPES.glob("*.toml")):
        data = tomllib.loads(path.read_text())
        rows.append([path.stem, data.get("description", "")])
    print(_table(rows, ["recipe", "description"]))
    return 0


def cmd_lr_find(args) -> int:
    import torch

    from xviz.models import torch_device
    from xviz.train.loop import build_data, build_model
    from xviz.train.lr_finder import lr_find, plot_lr_find
    from xviz.train.schedules import make_optimizer

    cfg = _config_from_args(args)
    device = torch_device(cfg.device)
    torch.manual_seed(cfg.seed)
    train_set, _, classes, _ = build_data(cfg, args.pm)
    model, _ = build_model(cfg, len(classes), args.pm)
    model.to(device)
    loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.workers)
    result = lr_find(model, loader, make_optimizer(model, cfg), start_lr=args.start_lr, end_lr=args.end_lr,
                     num_iter=args.iterations, device=device)
    out = Path(args.plot)
    plot_lr_find(result, out, title=f"{cfg.model} on {cfg.dataset}")
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
    out = plot_history(runs, args.out, title=args.title)
    print(f"wrote {out}")
    return 0


def build_parser(pm) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xviz", description="Visual explanations for PyTorch image models.")
    parser.add_argument("--version", action="version", version=f"xviz {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def model_args(p, default_model="resnet50"):
        p.add_argument("--model", default=default_model, help=f"registered model name (default: {default_model}; see `xviz models`)")
        p.add_argument("--checkpoint", help="an xviz checkpoint (overrides --model)")
        p.add_argument("--weights", default="DEFAULT", help="DEFAULT (pretrained), none (random) or a weights PATH")

    p = sub.add_parser("explain", help="explain images and write overlays", epilog=EXPLAIN_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMG|DIR", help="image files or folders")
    p.add_argument("--method", action="append", help="method(s), comma-separated or repeated (default: gradcam)")
    model_args(p)
    p.add_argument("--layer", help="target layer name (default: the model's, or the last spatial layer); several "
                   "as `a,b`: captured in one pass, each method's per-layer maps fused (mean of normalised maps)")
    p.add_argument("--target", help="class index or name to explain (default: the predicted class)")
    p.add_argument("--topk", type=int, default=1, help="explain each image's top K classes")
    p.add_argument("--out", default="xviz-out", help="output folder (default: xviz-out)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity in the overlay (0-1)")
    p.add_argument("--cmap", default="jet", help="matplotlib colormap (default: jet)")
    p.add_argument("--panel", action="store_true", help="also write image | heatmap | overlay panels")
    p.add_argument("--grid", action="store_true", help="also write one grid of all overlays per method")
    p.add_argument("--save-raw", action="store_true", help="also write the raw feature-size maps as .npy")
    p.set_defaults(func=cmd_explain)

    sub.add_parser("methods", help="list explanation methods").set_defaults(func=cmd_methods)
    p = sub.add_parser("models", help="list models")
    p.add_argument("--classes", metavar="MODEL", help="print the class names of MODEL")
    p.set_defaults(func=cmd_models)
    sub.add_parser("datasets", help="list datasets").set_defaults(func=cmd_datasets)
    sub.add_parser("plugins", help="list plugins, where they come from, their versions").set_defaults(func=cmd_plugins)
    p = sub.add_parser("layers", help="list a model's layers with spatial outputs")
    model_args(p)
    p.set_defaults(weights=None)
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("train", help="train a model; writes a run folder with checkpoints and history",
                       epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", help="a bundled recipe name (`xviz recipes`) or a .toml file; flags override it")
    p.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN exactly where it stopped")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (its checkpoints, "
                   "best.pt, last.pt, history)")
    _train_flags(p)
    p.set_defaults(func=cmd_train)

    sub.add_parser("recipes", help="list the bundled training recipes").set_defaults(func=cmd_recipes)

    p = sub.add_parser("lr-find", help="learning-rate range test: plot loss vs learning rate, suggest one")
    p.add_argument("--recipe")
    _train_flags(p)
    p.add_argument("--start-lr", type=float, default=1e-7)
    p.add_argument("--end-lr", type=float, default=10.0)
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--plot", default="lr_find.png", help="where to write the plot (default: lr_find.png)")
    p.set_defaults(func=cmd_lr_find)

    p = sub.add_parser("plot-history", help="compare runs: train/test accuracy and loss per epoch")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders, history .json/.csv files or checkpoints")
    p.add_argument("--label", action="append", help="legend label per run, in order (repeat)")
    p.add_argument("--title")
    p.add_argument("--out", default="history.png")
    p.set_defaults(func=cmd_plot_history)

    from xviz import evaluate, gallery

    evaluate.add_parser(sub)
    gallery.add_parser(sub)
    pm.hook.xviz_register_commands(subparsers=sub)
    return parser


def main(argv=None) -> int:
    try:
        from xviz.registry import get_plugin_manager

        pm = get_plugin_manager()
        parser = build_parser(pm)
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        args.pm = pm
        return args.func(args) or 0
    except XvizError as exc:
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else "failed"
        message = message.removeprefix("xviz.errors.XvizError: ")  # re-raised from a DataLoader worker
        print(f"xviz: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xviz: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
