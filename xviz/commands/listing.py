"""``xviz methods``, ``models``, ``datasets``, ``plugins``: what is installed, read from the
plugins' declarations (no torch); ``xviz layers``: a model's layers (builds the model)."""

from __future__ import annotations

import warnings

from xviz import hookimpl
from xviz.commands import add_model_flags
from xviz.console import table


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
        spec = registry.lookup(specs, args.classes, "model", "xviz models")
        for i, name in enumerate(spec.class_names):
            print(f"{i}\t{name}")
        return 0
    print(table([[n, s.num_classes, s.summary] for n, s in sorted(specs.items())], ["model", "classes", "summary"]))
    _warn_clashes(specs)
    return 0


def cmd_datasets(args) -> int:
    from xviz import registry

    specs = registry.datasets(args.pm)
    print(table([[n, len(s.class_names) or "?", s.summary] for n, s in sorted(specs.items())],
                ["dataset", "classes", "summary"]))
    _warn_clashes(specs)
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

    weights = args.weights or "none"  # names and shapes do not depend on the weights: nothing to download
    model = load_model(args.model, weights=weights, checkpoint=args.checkpoint, pm=args.pm)
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
    subparsers.add_parser("datasets", help="list datasets").set_defaults(func=cmd_datasets)
    subparsers.add_parser("plugins", help="list plugins, where they come from, their versions").set_defaults(
        func=cmd_plugins)
    p = subparsers.add_parser("layers", help="list a model's layers with spatial outputs")
    add_model_flags(p, weights_default=None)
    p.set_defaults(func=cmd_layers)
