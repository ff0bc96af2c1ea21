"""Learn to Pay Attention networks (AttnVGG) for xviz.

Model ``attn_vgg`` with options ``attention`` (before | after | none), ``compatibility`` (pc | dp),
``normalize`` (softmax | sigmoid), ``input_size`` (a multiple of 32) and ``width`` (channel
multiplier, 1 = the paper's).
"""

from xviz import hookimpl
from xviz.images import Preprocessing
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
