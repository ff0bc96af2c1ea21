"""Built-in models and datasets: torchvision ImageNet classifiers, the bundled demo model and the
synthetic part dataset."""

from __future__ import annotations

import contextlib
import io
import sys
import urllib.error
from functools import partial

from xviz import hookimpl
from xviz.data.synthetic import CLASSES, SyntheticParts
from xviz.datasets import DatasetSpec
from xviz.errors import XvizError
from xviz.images import Preprocessing
from xviz.models import LoadedModel, ModelSpec, load_checkpoint

from xviz_zoo.cifar import CifarResNet18
from xviz_zoo.datasets import dataset_specs
from xviz_zoo.demo import CHECKPOINT, PREPROCESSING, DemoCNN
from xviz_zoo.heads import set_head

CIFAR10_PREPROCESSING = Preprocessing(None, None, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))

# torchvision classifier -> the layer its CAMs explain by default
TORCHVISION_LAYERS = {
    "resnet18": "layer4", "resnet34": "layer4", "resnet50": "layer4", "resnet101": "layer4", "resnet152": "layer4",
    "vgg11": "features.19", "vgg16": "features.29", "vgg16_bn": "features.42", "vgg19": "features.35",
    "densenet121": "features.norm5", "densenet169": "features.norm5",
    "mobilenet_v2": "features", "mobilenet_v3_large": "features", "efficientnet_b0": "features",
    "convnext_tiny": "features",
    # vision transformers: the last block's first LayerNorm (pytorch-grad-cam's choice); its (N, 1 + h*w, C)
    # tokens are captured as an (N, C, h, w) grid, class token dropped (xviz.capture.token_grid_side)
    "vit_b_16": "encoder.layers.encoder_layer_11.ln_1", "vit_b_32": "encoder.layers.encoder_layer_11.ln_1",
    "vit_l_16": "encoder.layers.encoder_layer_23.ln_1",
}


def _weights_enum(name: str, weights: str):
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    try:
        return enum[weights.upper()] if weights.upper() != "DEFAULT" else enum.DEFAULT
    except KeyError:
        raise XvizError(f"model `{name}` has no weights `{weights}`: choose DEFAULT, none, a checkpoint PATH or one of "
                        f"{', '.join(w.name for w in enum)}") from None


def _torchvision_pretrained(name: str, weights: str) -> LoadedModel:
    import torchvision

    w = _weights_enum(name, weights)
    chatter = io.StringIO()  # torch.hub prints "Downloading: ..." on stdout: keep stdout for xviz's table
    try:
        with contextlib.redirect_stdout(chatter):
            module = torchvision.models.get_model(name, weights=w, progress=False)
        sys.stderr.write(chatter.getvalue())
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
        raise XvizError(
            f"could not download the pretrained weights {w} for `{name}` ({getattr(exc, 'reason', exc)}); they are "
            "fetched once and cached under $TORCH_HOME. Offline, use --model xviz-demo, --checkpoint PATH or "
            "--weights none"
        ) from None
    return LoadedModel(module, name, list(w.meta["categories"]), Preprocessing.from_transforms(w.transforms()), str(w))


def _no_options(name: str, options: dict) -> None:
    if options:
        raise XvizError(f"model `{name}` takes no options, got {', '.join(f'`{k}`' for k in options)}")


def _torchvision_build(name: str, num_classes: int, head: str | None = None, **options):
    """torchvision ``name`` with ``num_classes`` outputs; ``head="linear"|"concat"`` swaps the head."""
    import torchvision

    _no_options(name, options)
    if head is None:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    family = next((f for f in ("resnet", "vgg", "densenet") if name.startswith(f)), name)
    return set_head(torchvision.models.get_model(name, weights=None), head, family, num_classes)


def _torchvision_spec(name: str) -> ModelSpec:
    import torchvision

    default = torchvision.models.get_model_weights(name).DEFAULT
    return ModelSpec(
        name=name,
        build=partial(_torchvision_build, name),
        preprocessing=Preprocessing.from_transforms(default.transforms()),
        class_names=tuple(default.meta["categories"]),
        summary=f"torchvision {name}, ImageNet weights {default}",
        pretrained=partial(_torchvision_pretrained, name),
        family="torchvision",
    )


def _demo_pretrained(weights: str) -> LoadedModel:
    if weights.upper() != "DEFAULT":
        raise XvizError(f"model `xviz-demo` has only its bundled weights: use --weights DEFAULT or none, not `{weights}`")
    return load_checkpoint(CHECKPOINT)


@hookimpl
def xviz_register_models():
    def demo_build(num_classes, **options):
        _no_options("xviz-demo", options)
        return DemoCNN(num_classes)

    def cifar_build(num_classes, **options):
        _no_options("cifar_resnet18", options)
        return CifarResNet18(num_classes)

    cifar = ModelSpec(
        name="cifar_resnet18",
        build=cifar_build,
        preprocessing=CIFAR10_PREPROCESSING,
        class_names=tuple(str(i) for i in range(10)),
        summary="ResNet-18 for 32x32 inputs (3x3 stem), as trained on CIFAR-10 to 91%",
        family="xviz",
    )
    demo = ModelSpec(
        name="xviz-demo",
        build=demo_build,
        preprocessing=PREPROCESSING,
        class_names=CLASSES,
        summary="small CNN trained on the synthetic part dataset (bundled, offline)",
        pretrained=_demo_pretrained,
        family="xviz",
    )
    return [demo, cifar, *(_torchvision_spec(name) for name in TORCHVISION_LAYERS)]


@hookimpl
def xviz_register_datasets():
    def build(split, root=None, transform=None, size=None, seed=0, image_size=64):
        return SyntheticParts(split, size=size, seed=seed, image_size=image_size,
                              transform=transform or PREPROCESSING.tensor)

    synthetic = DatasetSpec("synthetic", build, CLASSES, PREPROCESSING,
                            "synthetic creatures whose class is one part; object and part masks (generated, no files)",
                            augment=("flip",))
    return [synthetic, *dataset_specs()]


@hookimpl
def xviz_default_target_layer(model, model_name):
    if model_name == "xviz-demo":
        return "features"
    if model_name == "cifar_resnet18":
        return "layer4"
    return TORCHVISION_LAYERS.get(model_name)
