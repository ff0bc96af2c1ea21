"""``--model timm:NAME``: any timm model, with preprocessing and class names from timm's pretrained config.

timm is optional (``pip install xviz[timm]``). Pretrained weights come from the Hugging Face Hub and are
cached there; offline, ``--weights none`` builds the architecture with random weights.
"""

from __future__ import annotations

from xviz.errors import XvizError
from xviz.images import Preprocessing
from xviz.models import LoadedModel
from xviz.specs import ModelSpec, lazy


def _timm():
    try:
        import timm
    except ImportError:
        raise XvizError("`timm:` models need timm: pip install 'xviz[timm]' (or pip install timm)") from None
    return timm


def timm_spec(name: str) -> ModelSpec:
    """A spec for timm model ``name``, or an unknown-model error with the closest timm names."""
    from xviz.console import did_you_mean

    timm = _timm()
    if not timm.is_model(name):
        raise XvizError(f"unknown timm model `{name}`: {did_you_mean(name, timm.list_models(), cutoff=0.6)}"
                        "`timm.list_models()` lists them")
    return ModelSpec(
        name=f"timm:{name}",
        build=lazy("xviz_zoo.timm_models:build", name),
        preprocessing=lazy("xviz_zoo.timm_models:preprocessing", name),
        class_names=lazy("xviz_zoo.timm_models:class_names", name),
        summary=f"timm {name}",
        pretrained=lazy("xviz_zoo.timm_models:pretrained", name),
        family="timm",
    )


def build(name: str, num_classes: int, **options):
    """timm ``name`` with random weights and ``num_classes`` outputs."""
    return _create(name, False, num_classes, options)


def _create(name: str, pretrained: bool, num_classes: int | None = None, options: dict | None = None):
    timm = _timm()
    kwargs = dict(options or {})
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def _config(name: str) -> dict:
    from timm.data import resolve_data_config

    return resolve_data_config({}, model=_create(name, False))


def preprocessing(name: str) -> Preprocessing:
    """Resize to ``size / crop_pct``, center-crop ``size``, timm's mean and std (its pretrained config)."""
    cfg = _config(name)
    crop = int(cfg["input_size"][-1])
    resize = int(crop / cfg.get("crop_pct", 0.875))
    interpolation = cfg.get("interpolation", "bilinear")
    interpolation = interpolation if interpolation in ("nearest", "bilinear", "bicubic") else "bilinear"
    return Preprocessing(resize, crop, tuple(cfg["mean"]), tuple(cfg["std"]), interpolation)


def class_names(name: str) -> tuple[str, ...]:
    """The names of the classes timm's pretrained weights score (ImageNet descriptions where known)."""
    model = _create(name, False)
    count = model.num_classes
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if subset:
            info = ImageNetInfo(subset)
            return tuple(info.index_to_description(i) for i in range(count))
    except Exception:  # older timm without class info: numbered classes
        pass
    return tuple(str(i) for i in range(count))


def cache_folder() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return str(HF_HUB_CACHE)
    except ImportError:
        return "~/.cache/huggingface/hub"


def pretrained(name: str, weights: str) -> LoadedModel:
    if weights.upper() != "DEFAULT":
        raise XvizError(f"timm model `{name}` has its pretrained weights (DEFAULT), none, or a weights PATH; "
                        f"pick the weights by the timm name instead of `{weights}`")
    try:
        module = _create(name, True)
    except Exception as exc:  # offline, no such weights, hub errors
        raise XvizError(f"could not load timm's pretrained weights for `{name}` ({type(exc).__name__}); they are "
                        f"downloaded once into {cache_folder()}. Offline, use --weights none or --weights PATH") from None
    return LoadedModel(module, f"timm:{name}", list(class_names(name)), preprocessing(name), f"timm {name} pretrained")
