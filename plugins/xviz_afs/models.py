"""The ``afs_resnet*`` models: torchvision ResNets with AFS gates on every Conv+BN pair."""

from __future__ import annotations

from xviz import registry
from xviz.models import LoadedModel

from xviz_afs.gates import add_gates, check_ratio


def build(depth: int, num_classes: int, ratio: float = 0.9, channels: dict | None = None):
    """torchvision ``resnet{depth}`` with ``num_classes`` outputs and AFS gates keeping ``ratio``;
    ``channels`` (``{gated conv: kept channel indices}``, what ``xviz afs-update --prune`` records):
    the network pruned to those channels (:func:`xviz_afs.pruning.prune`)."""
    import torchvision

    check_ratio(ratio)
    model = add_gates(torchvision.models.get_model(f"resnet{depth}", weights=None, num_classes=num_classes), ratio)
    if channels is not None:
        from xviz_afs.pruning import prune

        prune(model, channels)
    return model


def pretrained(depth: int, weights: str, ratio: float = 0.9) -> LoadedModel:
    """The registry's pretrained ``resnet{depth}`` (ImageNet) with gates added."""
    plain = registry.lookup(registry.models(registry.default_plugin_manager()), f"resnet{depth}", "model",
                            "xviz models")
    if plain.pretrained is None:
        from xviz.errors import XvizError

        raise XvizError(f"no pretrained `resnet{depth}` is registered to add AFS gates to")
    loaded = plain.pretrained(weights)
    add_gates(loaded.module, ratio)
    loaded.name = f"afs_resnet{depth}"
    return loaded
