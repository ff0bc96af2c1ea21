"""AFDS for xviz ("Pay Attention to Features, Transfer Learn Faster CNNs", Wang et al., ICLR 2020).

* models ``afs_resnet18`` ... ``afs_resnet152``: torchvision ResNets with an attention feature
  selection gate on every Conv+BN pair of the residual branches (option ``ratio``: the fraction d
  of channels each gate keeps, default 0.9); ``--weights DEFAULT`` loads the ImageNet ResNet
  through the model registry, then adds the gates;
* regularisers ``l2-sp``, ``fea-map``, ``afd`` for ``xviz train --reg``;
* method ``afs-channels``: where the channels each gate keeps fire, one map per stage;
* commands ``xviz afs-report`` (channel importance, kept fractions, top channels, MACs) and
  ``xviz afs-update`` (set the s / m masks from a pass over data).
"""

from __future__ import annotations

from functools import partial

import torch

from xviz import hookimpl, registry
from xviz.images import Preprocessing
from xviz.methods import Context, Method
from xviz.models import LoadedModel, ModelSpec

from xviz_afs.gates import add_gates, check_ratio, recording, require_gates
from xviz_afs.regularizers import regularizer_specs, stage_last_convs

IMAGENET = Preprocessing(256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DEPTHS = (18, 34, 50, 101, 152)


def build(depth: int, num_classes: int, ratio: float = 0.9):
    """torchvision ``resnet{depth}`` with ``num_classes`` outputs and AFS gates keeping ``ratio``."""
    import torchvision

    check_ratio(ratio)
    return add_gates(torchvision.models.get_model(f"resnet{depth}", weights=None, num_classes=num_classes), ratio)


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


@hookimpl
def xviz_register_models():
    return [ModelSpec(
        name=f"afs_resnet{d}", build=partial(build, d), preprocessing=IMAGENET,
        class_names=tuple(str(i) for i in range(1000)),
        summary=f"ResNet-{d} with AFS gates on every Conv+BN (option ratio = kept fraction d, default 0.9)",
        pretrained=partial(pretrained, d), family="afds",
    ) for d in DEPTHS]


@hookimpl
def xviz_register_regularizers():
    return regularizer_specs()


@hookimpl
def xviz_default_target_layer(model, model_name):
    return "layer4" if model_name and model_name.startswith("afs_resnet") else None


class AFSChannels(Method):
    """Where the channels an AFS gate keeps fire: for each ResNet stage's last gated layer,
    ``M = sum_c ReLU(out_c)`` with ``out_c = m_c (s_c pi_c + (1 - s_c) gamma_c keep_c) BN(conv x)_c``,
    i.e. the gated output (channels dropped by winner-take-all or the masks contribute nothing).
    The same map for every target: the gates do not depend on the class. Per-channel importances,
    kept fractions and MACs: ``xviz afs-report``."""

    name = "afs-channels"
    summary = "AFDS: where the channels each AFS gate keeps fire, per ResNet stage (Wang et al. 2020)"
    uses_layer = False
    reference = "https://openreview.net/forum?id=ryxyCeHtPB"

    def check(self, model, pm=None) -> None:
        require_gates(model, self.name)

    def observe(self, model):
        return recording(model)

    def compute(self, ctx: Context) -> dict[str, torch.Tensor]:
        records, k = ctx.observed[self.name], ctx.targets.shape[1]
        out = {}
        for name in stage_last_convs(ctx.model):
            if name in records:
                fired = torch.relu(records[name]["output"]).sum(dim=1)  # (N, h, w)
                out[name] = fired[:, None].expand(-1, k, -1, -1)
        return out


@hookimpl
def xviz_register_methods():
    return [AFSChannels()]


@hookimpl
def xviz_register_commands(subparsers):
    from xviz_afs.report import add_commands

    add_commands(subparsers)
