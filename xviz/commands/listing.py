"""``xviz methods``, ``models``, ``datasets``, ``plugins``: what is installed, read from the
plugins' declarations (no torch); ``xviz layers``: a model's layers (builds the model)."""

from __future__ import annotations

import random
import warnings

from xviz import hookimpl
from xviz.commands import add_model_flags, model_arguments
from xviz.console import table
from xviz.errors import XvizError


def _warn_clashes(found) -> None:
    from xviz.registry import PluginWarning

    for name in found.clashes:
        warnings.warn(f"{found.clash_message(name)}; it is not listed", PluginWarning)


def cmd_methods(args) -> int:
    from xviz import registry

    found = registry.method_declarations(args.pm)
    print(table([[name, found.plugins[name], item.summary] for name, item in sorted(found.items())],
                ["method", "plugin", "summary"]))
    _warn_clashes(found)
    return 0


def cmd_models(args) -> int:
    from xviz import registry

    specs = registry.models(args.pm)
    if args.classes:
        from xviz.models import resolve_spec

        spec = resolve_spec(args.classes, specs, args.pm)
        for i, name in enumerate(spec.class_names):
            print(f"{i}\t{name}")
        return 0
    print(table([[n, s.num_classes, s.summary] for n, s in sorted(specs.items())], ["model", "classes", "summary"]))
    print("also: any torchvision classifier by name (e.g. regnet_y_400mf, swin_t), timm:NAME (with timm installed) "
          "and path/to/file.py:factory (your own module; options via --model-option K=V)")
    _warn_clashes(specs)
    return 0


def cmd_datasets(args) -> int:
    from xviz import registry

    specs = registry.datasets(args.pm)
    if args.mosaic:
        return write_mosaics(args, specs)
    print(table([[n, len(s.class_names) or "?", s.summary] for n, s in sorted(specs.items())],
                ["dataset", "classes", "summary"]))
    _warn_clashes(specs)
    return 0


def dataset_mosaic(name: str, split: str, root, count: int, pm):
    """A figure of ``count`` images drawn at random (seed 0) from dataset ``name``'s ``split``, titled with their classes."""
    from xviz.datasets import load_dataset
    from xviz.render import mosaic_figure

    dataset, spec = load_dataset(name, split, root=root, pm=pm, transform=lambda image: image)
    if not len(dataset):
        raise XvizError(f"dataset `{name}` ({split}) holds no images")
    classes = list(getattr(dataset, "classes", None) or spec.class_names)
    pictures, titles = [], []
    for index in sorted(random.Random(0).sample(range(len(dataset)), min(count, len(dataset)))):
        image, label = dataset[index]
        pictures.append(image.convert("RGB"))
        titles.append(str(classes[label]) if label < len(classes) else str(label))
    return mosaic_figure(pictures, titles, f"{name} ({split}): {count} of {len(dataset):,} images")


def write_mosaics(args, specs) -> int:
    """``xviz datasets --mosaic DIR``: ``mosaic_NAME.png`` per dataset; those whose files are missing are
    named, with what they need, and the command fails only when none could be drawn."""
    from pathlib import Path

    from xviz.render import save_png

    names = [n.strip() for n in (args.dataset or ",".join(sorted(specs))).split(",") if n.strip()]
    drawn, missing = [], []
    for name in names:
        try:
            figure = dataset_mosaic(name, args.split, args.data, args.count, args.pm)
        except XvizError as exc:
            missing.append(f"{name}: {str(exc).splitlines()[0]}")
            continue
        drawn.append(str(save_png(figure, Path(args.mosaic) / f"mosaic_{name}.png")))
    for line in missing:
        print(f"not drawn: {line}")
    if drawn:
        print("wrote " + ", ".join(drawn))
    if not drawn:
        raise XvizError("no dataset could be drawn: " + "; ".join(missing))
    return 0


def cmd_plugins(args) -> int:
    rows = [[i.name, i.source, i.version] for i in args.pm.infos.values()]
    rows += [[name, "skipped: failed to load (see the warning above)", "?"] for name in args.pm.skipped]
    print(table(rows, ["plugin", "source", "version"]))
    return 0


def cmd_layers(args) -> int:
    import torch

    from xviz.capture import spatial_layers
    from xviz.explainer import resolve_layer
    from xviz.models import load_model

    arguments = model_arguments(args)  # names and shapes do not depend on the weights: nothing to download
    model = load_model(**{**arguments, "weights": args.weights or "none"})
    size = model.preprocessing.crop or model.preprocessing.resize or 224
    example = torch.zeros(1, 3, size, size)
    default, _ = resolve_layer(model.module, None, example, model.name, args.pm)
    rows = [[name, "x".join(map(str, shape)), "default" if name == default else ""]
            for name, shape in spatial_layers(model.module, example)]
    print(table(rows, ["layer", f"output (C x h x w) at {size}x{size}", ""]))
    return 0


@hookimpl
def xviz_register_commands(subparsers):
    subparsers.add_parser("methods", help="list explanation methods").set_defaults(func=cmd_methods)
    p = subparsers.add_parser("models", help="list models")
    p.add_argument("--classes", metavar="MODEL", help="print the class names of MODEL")
    p.set_defaults(func=cmd_models)
    p = subparsers.add_parser("datasets", help="list datasets; --mosaic DIR draws sample images of each")
    p.add_argument("--mosaic", metavar="DIR", help="write mosaic_NAME.png (sample images and their classes) per dataset")
    p.add_argument("--dataset", metavar="A,B", help="the datasets to draw (default: all registered)")
    p.add_argument("--data", metavar="ROOT", help="root folder of the datasets' files")
    p.add_argument("--split", default="train", help="split to draw from (default: train)")
    p.add_argument("--count", type=int, default=12, help="images per mosaic (default: 12)")
    p.set_defaults(func=cmd_datasets)
    subparsers.add_parser("plugins", help="list plugins, where they come from, their versions").set_defaults(
        func=cmd_plugins)
    p = subparsers.add_parser("layers", help="list a model's layers with spatial outputs")
    add_model_flags(p, weights_default=None)
    p.set_defaults(func=cmd_layers)
