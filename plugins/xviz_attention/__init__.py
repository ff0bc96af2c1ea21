"""Learn to Pay Attention networks (AttnVGG) and the ``attention`` method for xviz.

Model ``attn_vgg`` with options ``attention`` (before | after | none), ``compatibility`` (pc | dp),
``normalize`` (softmax | sigmoid), ``input_size`` (a multiple of 32) and ``width`` (channel
multiplier, 1 = the paper's). Declarations only: the network (:mod:`xviz_attention.models`), the
method (:mod:`xviz_attention.method`) and the report (:mod:`xviz_attention.report`) load when used.
"""

from xviz import hookimpl
from xviz.images import Preprocessing
from xviz.specs import MethodSpec, ModelSpec, attributes_of, lazy

CIFAR100_PREPROCESSING = Preprocessing(None, None, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))


@hookimpl
def xviz_register_models():
    return [ModelSpec(
        name="attn_vgg",
        build=lazy("xviz_attention.models:AttnVGG"),
        preprocessing=CIFAR100_PREPROCESSING,
        class_names=tuple(str(i) for i in range(100)),
        summary="Learn to Pay Attention VGG-att3 (before/after pooling, pc/dp, softmax/sigmoid; options)",
        family="attention",
    )]


@hookimpl
def xviz_default_target_layer(model, model_name):
    return "cb5" if model_name == "attn_vgg" else None


@hookimpl
def xviz_register_methods():
    return [MethodSpec("attention", "xviz_attention.method:AttentionMaps",
                       "attention map of each attention block (Learn to Pay Attention), one forward pass"),
            MethodSpec("attention-reference", "xviz_attention.method:reference_view",
                       "attention maps drawn as the authors' code draws them: sigmoid maps unscaled on 0-1, "
                       "softmax min-max")]


@hookimpl
def xviz_register_commands(subparsers):
    p = subparsers.add_parser("attention-report", help="where each attention layer looks: mass on each part, "
                                                       "pointing game, degenerate maps (vs GradCAM, GradCAM++)")
    p.add_argument("--checkpoint", required=True, help="an attention model's checkpoint or run folder")
    p.add_argument("--dataset", default="synthetic", help="a dataset with part masks (default: synthetic)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, help="use only the first N images")
    p.add_argument("--out", default="attention-report", help="folder for part_attention.csv and .png")
    p.set_defaults(func=lazy("xviz_attention.report:cmd_report"))


__getattr__ = attributes_of("xviz_attention.method")  # e.g. xviz_attention.AttentionMaps(view="reference")
