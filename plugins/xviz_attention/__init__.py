"""Learn to Pay Attention networks (AttnVGG) and the ``attention`` method for xviz.

Model ``attn_vgg`` with options ``attention`` (before | after | none), ``compatibility`` (pc | dp),
``normalize`` (softmax | sigmoid), ``input_size`` (a multiple of 32) and ``width`` (channel
multiplier, 1 = the paper's).
"""

import contextlib
from pathlib import Path

import torch

from xviz import hookimpl, registry
from xviz.errors import XvizError
from xviz.hooks import find_layer
from xviz.images import Preprocessing
from xviz.methods import Context, Method
from xviz.models import ModelSpec

from xviz_attention.models import AttnVGG

CIFAR100_PREPROCESSING = Preprocessing(None, None, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))


@hookimpl
def xviz_register_models():
    return [ModelSpec(
        name="attn_vgg",
        build=lambda num_classes, **options: AttnVGG(num_classes, **options),
        preprocessing=CIFAR100_PREPROCESSING,
        class_names=tuple(str(i) for i in range(100)),
        summary="Learn to Pay Attention VGG-att3 (before/after pooling, pc/dp, softmax/sigmoid; options)",
        family="attention",
    )]


@hookimpl
def xviz_default_target_layer(model, model_name):
    return "cb5" if model_name == "attn_vgg" else None


class AttentionMaps(Method):
    """The attention maps of every attention block, as the network normalises them.

    Works for any model that follows the attention protocol: an attribute ``attention_layers`` (module
    names) whose modules return the raw compatibility scores ``c`` (N, 1, h, w) (or a tuple starting
    with them) and have a method ``normalized(c)`` giving the map the network uses (softmax over
    space, or sigmoid). One Explanation per block; maps do not depend on the target.
    """

    name = "attention"
    summary = "attention map of each attention block (Learn to Pay Attention), one forward pass"
    uses_layer = False
    reference = "https://arxiv.org/abs/1804.02391"

    def check(self, model, pm=None) -> None:
        if not getattr(model, "attention_layers", None):
            layer_methods = sorted(n for n, m in registry.methods(pm or registry.default_plugin_manager()).items()
                                   if m.uses_layer)
            raise XvizError("the model has no attention blocks (no `attention_layers`): `attention` does not apply; "
                            f"use {', '.join(layer_methods)}")

    @contextlib.contextmanager
    def observe(self, model):
        maps: dict[str, torch.Tensor] = {}

        def record(name):
            def hook(module, inputs, output):
                c = output[0] if isinstance(output, (tuple, list)) else output
                maps[name] = module.normalized(c).detach().clone()  # a copy: the network may change c in place
            return hook

        handles = [find_layer(model, name).register_forward_hook(record(name)) for name in model.attention_layers]
        try:
            yield maps
        finally:
            for handle in handles:
                handle.remove()

    def compute(self, ctx: Context) -> dict[str, torch.Tensor]:
        k = ctx.targets.shape[1]
        return {name: a.float().expand(-1, k, -1, -1) for name, a in ctx.observed[self.name].items()}


@hookimpl
def xviz_register_methods():
    return [AttentionMaps()]


def _cmd_report(args) -> int:
    from xviz.datasets import load_dataset
    from xviz.models import load_model
    from xviz_attention.report import area_shares, bar_chart, part_attention, table, write_csv

    model = load_model(checkpoint=args.checkpoint, pm=args.pm)
    data, _ = load_dataset(args.dataset, args.split, transform=model.preprocessing.tensor, pm=args.pm)
    rows = part_attention(model, data, pm=args.pm, limit=args.limit)
    area = area_shares(data, args.limit)
    print(table(rows, area))
    for row in rows:
        if row.degenerate > 0.5:
            print(f"{row.source}: degenerate (blank or uniform) on {row.degenerate:.0%} of the images")
    out = Path(args.out)
    print(f"wrote {write_csv(rows, out / 'part_attention.csv')} and "
          f"{bar_chart(rows, area, out / 'part_attention.png', f'where each layer looks ({args.dataset} {args.split})')}")
    return 0


@hookimpl
def xviz_register_commands(subparsers):
    p = subparsers.add_parser("attention-report", help="where each attention layer looks: mass on each part, "
                                                       "pointing game, degenerate maps (vs GradCAM, GradCAM++)")
    p.add_argument("--checkpoint", required=True, help="an attention model's checkpoint or run folder")
    p.add_argument("--dataset", default="synthetic", help="a dataset with part masks (default: synthetic)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, help="use only the first N images")
    p.add_argument("--out", default="attention-report", help="folder for part_attention.csv and .png")
    p.set_defaults(func=_cmd_report)
