"""``xviz model-diagram``: a model's architecture drawn from the module itself (:mod:`xviz.diagram`)."""

from __future__ import annotations

from xviz import hookimpl
from xviz.commands import add_model_flags, model_arguments
from xviz.console import png_path
from xviz.errors import XvizError

EXAMPLES = """examples:
  xviz model-diagram --model attn_vgg --weights none --model-option input_size=32 --out attn_vgg.png
  xviz model-diagram --checkpoint runs/attn --depth 2 --out architecture.png
"""


def cmd_model_diagram(args) -> int:
    import torch

    from xviz.diagram import draw, trace
    from xviz.models import load_model
    from xviz.render import save_png

    out = png_path(args.out)
    model = load_model(**model_arguments(args))
    size = args.input_size or model.preprocessing.crop or getattr(model.module, "input_size", None) or 224
    nodes = trace(model.module, torch.zeros(1, 3, size, size), depth=args.depth)
    highlight = list(getattr(model.module, "attention_layers", None) or []) + list(args.highlight or [])
    title = args.title or f"{model.name}: {sum(p.numel() for p in model.module.parameters()):,} parameters, " \
                          f"{size}×{size} input"
    path = save_png(draw(nodes, title, highlight=highlight), out)
    print(f"wrote {path} ({len(nodes)} boxes)")
    return 0


@hookimpl
def xviz_register_commands(subparsers):
    import argparse

    p = subparsers.add_parser("model-diagram", help="draw a model's architecture from the module itself: a box per "
                              "module, an arrow per tensor", epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p, default_model="xviz-demo")
    p.add_argument("--depth", type=int, default=1, help="how deep into the modules to draw boxes (default: 1, the "
                   "model's children)")
    p.add_argument("--input-size", type=int, help="side of the dummy input (default: the model's crop size)")
    p.add_argument("--highlight", action="append", metavar="MODULE", help="draw this module in orange (repeat; "
                   "attention blocks are highlighted by themselves)")
    p.add_argument("--title")
    p.add_argument("--out", default="model_diagram.png", help="the figure (default: model_diagram.png)")
    p.set_defaults(func=cmd_model_diagram)
