"""Built-in models and datasets: torchvision ImageNet classifiers, the bundled demo model and the
synthetic part dataset. Declarations only: torch and torchvision load when a model is used
(:mod:`xviz_zoo.builders`)."""

from __future__ import annotations

from xviz import hookimpl
from xviz.data.synthetic import CLASSES, SyntheticParts
from xviz.images import Preprocessing
from xviz.specs import DatasetSpec, ModelSpec, lazy

from xviz_zoo.datasets import IMAGENET_PREPROCESSING, dataset_specs
from xviz_zoo.demo import PREPROCESSING

CIFAR10_PREPROCESSING = Preprocessing(None, None, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))

# torchvision classifier -> (the layer its CAMs explain by default, its DEFAULT ImageNet weights); the
# weights' names are checked against the installed torchvision by the tests
TORCHVISION = {
    "resnet18": ("layer4", "ResNet18_Weights.IMAGENET1K_V1"),
    "resnet34": ("layer4", "ResNet34_Weights.IMAGENET1K_V1"),
    "resnet50": ("layer4", "ResNet50_Weights.IMAGENET1K_V2"),
    "resnet101": ("layer4", "ResNet101_Weights.IMAGENET1K_V2"),
    "resnet152": ("layer4", "ResNet152_Weights.IMAGENET1K_V2"),
    "vgg11": ("features.19", "VGG11_Weights.IMAGENET1K_V1"),
    "vgg16": ("features.29", "VGG16_Weights.IMAGENET1K_V1"),
    "vgg16_bn": ("features.42", "VGG16_BN_Weights.IMAGENET1K_V1"),
    "vgg19": ("features.35", "VGG19_Weights.IMAGENET1K_V1"),
    "densenet121": ("features.norm5", "DenseNet121_Weights.IMAGENET1K_V1"),
    "densenet169": ("features.norm5", "DenseNet169_Weights.IMAGENET1K_V1"),
    "mobilenet_v2": ("features", "MobileNet_V2_Weights.IMAGENET1K_V2"),
    "mobilenet_v3_large": ("features", "MobileNet_V3_Large_Weights.IMAGENET1K_V2"),
    "efficientnet_b0": ("features", "EfficientNet_B0_Weights.IMAGENET1K_V1"),
    "convnext_tiny": ("features", "ConvNeXt_Tiny_Weights.IMAGENET1K_V1"),
    # vision transformers: the last block's first LayerNorm (pytorch-grad-cam's choice); its (N, 1 + h*w, C)
    # tokens are captured as an (N, C, h, w) grid, class token dropped (xviz.capture.token_grid_side)
    "vit_b_16": ("encoder.layers.encoder_layer_11.ln_1", "ViT_B_16_Weights.IMAGENET1K_V1"),
    "vit_b_32": ("encoder.layers.encoder_layer_11.ln_1", "ViT_B_32_Weights.IMAGENET1K_V1"),
    "vit_l_16": ("encoder.layers.encoder_layer_23.ln_1", "ViT_L_16_Weights.IMAGENET1K_V1"),
}
TORCHVISION_LAYERS = {name: layer for name, (layer, _) in TORCHVISION.items()}


def _torchvision_spec(name: str) -> ModelSpec:
    weights = TORCHVISION[name][1] if name in TORCHVISION else "DEFAULT"
    return ModelSpec(
        name=name,
        build=lazy("xviz_zoo.builders:build", name),
        preprocessing=lazy("xviz_zoo.builders:preprocessing", name),
        class_names=lazy("xviz_zoo.builders:class_names", name),
        num_classes=1000,
        summary=f"torchvision {name}, ImageNet weights {weights}",
        pretrained=lazy("xviz_zoo.builders:pretrained", name),
        family="torchvision",
    )


@hookimpl
def xviz_register_models():
    demo = ModelSpec(
        name="xviz-demo",
        build=lazy("xviz_zoo.builders:build_demo"),
        preprocessing=PREPROCESSING,
        class_names=CLASSES,
        summary="small CNN trained on the synthetic part dataset (bundled, offline)",
        pretrained=lazy("xviz_zoo.builders:demo_pretrained"),
        family="xviz",
    )
    cifar = ModelSpec(
        name="cifar_resnet18",
        build=lazy("xviz_zoo.builders:build_cifar_resnet18"),
        preprocessing=CIFAR10_PREPROCESSING,
        class_names=tuple(str(i) for i in range(10)),
        summary="ResNet-18 for 32x32 inputs (3x3 stem), as trained on CIFAR-10 to 91%",
        family="xviz",
    )
    return [demo, cifar, *(_torchvision_spec(name) for name in TORCHVISION)]


def _synthetic(split, root=None, transform=None, size=None, seed=0, image_size=64):
    return SyntheticParts(split, size=size, seed=seed, image_size=image_size,
                          transform=transform or PREPROCESSING.tensor)


@hookimpl
def xviz_register_datasets():
    synthetic = DatasetSpec("synthetic", _synthetic, CLASSES, PREPROCESSING,
                            "synthetic creatures whose class is one part; object and part masks (generated, no files)",
                            augment=("flip",))
    imagefolder = DatasetSpec("imagefolder", lazy("xviz_zoo.folders:build_imagefolder"), (), None,
                              "your own images, one subfolder per class (ROOT/train + ROOT/val, or split by "
                              "val_fraction); preprocessed as the model expects (--data ROOT)", augment=("rrc", "flip"))
    flowers = DatasetSpec("flowers102", lazy("xviz_zoo.folders:build_flowers102"), (), IMAGENET_PREPROCESSING,
                          "Oxford 102 Flowers: 102 species, 2,040 train (train+val) / 6,149 test, official files "
                          "(downloads when online; --data PATH)", augment=("rrc", "rotate", "flip"))
    return [synthetic, *dataset_specs(), imagefolder, flowers]


@hookimpl
def xviz_resolve_model(name):
    """Every torchvision classifier by its name, and ``timm:NAME`` (torch loads only now)."""
    if name.startswith("timm:"):
        from xviz_zoo.timm_models import timm_spec

        return timm_spec(name.removeprefix("timm:"))
    from xviz_zoo.builders import torchvision_classifiers

    return _torchvision_spec(name) if name in torchvision_classifiers() else None


@hookimpl
def xviz_default_target_layer(model, model_name):
    if model_name == "xviz-demo":
        return "features"
    if model_name == "cifar_resnet18":
        return "layer4"
    if model_name in TORCHVISION_LAYERS:
        return TORCHVISION_LAYERS[model_name]
    if not model_name:
        return None
    from xviz_zoo.builders import family_layer

    return family_layer(model, model_name)
