"""Transfer-learning regularisers (``xviz train --reg NAME``): L2-SP, feature-map distillation and
attention feature distillation (AFD), each measured against the frozen source network (the model
as training starts). The loss is ``CE + lambda * R``.

* ``l2-sp``:   ``R = 1/2 sum_w ||w - w0||^2`` over every weight but the classifier and the AFS gates.
* ``fea-map``: ``R = sum_l 1/2 ||F_l^t - F_l^s||_F^2`` over the hooked layers ``l``, summed over the
  batch (not averaged, as the reference code: its lambda carries over, and R grows with the batch size).
* ``afd``:     ``rho_{l,b,:} = softmax_c(W2 ReLU(W1 vec(F^s_{l,b,c}) + b1) + b2)``;
  ``R = 1/B sum_l sum_{b,c} rho_{l,b,c} ||F^t_{l,b,c} - F^s_{l,b,c}||_2`` (not squared, as the
  reference code). The attention networks ``W1, W2`` read the *source* features and are trained
  with the model.

Hooked layers (``layers`` option, ``+``-separated module names) default to the last convolution of
each ResNet stage: ``layer1.2.conv3 + layer2.3.conv3 + layer3.22.conv3 + layer4.2.conv3`` on
ResNet-101, as in the AFDS code. The source runs with its AFS gates switched off: it is the plain
pretrained network, and it uses the target's BatchNorm modes (batch statistics where the target uses
them; its running statistics never change). So L2-SP is exactly zero at the starting point, and so
are fea-map and AFD for a network without gates; for a gated target they start at the distance
between the gated features and the plain source's (winner-take-all drops channels from the first
step, and h is not exactly 1), as in the reference code, and grow as the target moves away.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from xviz.errors import XvizError
from xviz.capture import find_layer
from xviz.regularizers import Regularizer, RegularizerSpec

from xviz_afs.gates import AFSGate, set_gates


def stage_last_convs(model: nn.Module) -> list[str]:
    """The last convolution of the last block of each ResNet stage (``layerN``)."""
    names = []
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        blocks = getattr(model, stage, None)
        if isinstance(blocks, nn.Sequential) and len(blocks) and isinstance(blocks[-1], (BasicBlock, Bottleneck)):
            last = "conv3" if isinstance(blocks[-1], Bottleneck) else "conv2"
            names.append(f"{stage}.{len(blocks) - 1}.{last}")
    return names


def parse_layers(model: nn.Module, layers) -> list[str]:
    if layers is None:
        names = stage_last_convs(model)
        if not names:
            raise XvizError("the model has no ResNet stages (layer1 ... layer4): name the layers to distil with "
                            "--reg-options layers=NAME+NAME (see `xviz layers`)")
        return names
    names = [n.strip() for n in str(layers).replace(",", "+").split("+") if n.strip()]
    for name in names:
        find_layer(model, name)
    return names


class _Features:
    """Forward hooks recording named layers' outputs during the model's training forward passes."""

    def __init__(self, model: nn.Module, names: list[str], always: bool = False):
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [find_layer(model, n).register_forward_hook(self._hook(n, always)) for n in names]

    def _hook(self, name, always):
        def hook(module, args, output):
            if always or (module.training and torch.is_grad_enabled()):
                self.outputs[name] = output.clone()  # a copy (in the graph): later layers may change output in place
        return hook

    def take(self, names) -> list[torch.Tensor]:
        missing = [n for n in names if n not in self.outputs]
        if missing:
            raise XvizError(f"layer `{missing[0]}` did not run in the training forward pass")
        out = [self.outputs.pop(n) for n in names]
        self.outputs.clear()
        return out

    def close(self):
        for h in self.handles:
            h.remove()
        self.handles = []


class L2SP(Regularizer):
    """``R = 1/2 sum ||w - w0||^2`` over the weights the model shares with its starting point."""

    def __init__(self, model, source, head: str):
        super().__init__(model, source)
        start = dict(source.named_parameters())
        self.names = [n for n, p in model.named_parameters()
                      if not n.startswith(head + ".") and ".afs." not in n and n in start and start[n].shape == p.shape]
        object.__setattr__(self, "pairs", [(dict(model.named_parameters())[n], start[n]) for n in self.names])

    def penalty(self, inputs: torch.Tensor) -> torch.Tensor:
        total = inputs.new_zeros((), dtype=torch.float32)
        for w, w0 in self.pairs:
            total = total + 0.5 * (w.float() - w0.float()).pow(2).sum()
        return total


class _Distillation(Regularizer):
    """Shared by fea-map and AFD: target features from the training forward, source features from
    one extra no-grad forward of the frozen source on the same inputs."""

    def __init__(self, model, source, layers=None):
        super().__init__(model, source)
        set_gates(source, False)
        target_bn = {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        pairs = [(m, target_bn[n]) for n, m in source.named_modules() if n in target_bn]
        for m, _ in pairs:
            m.momentum = 0.0  # batch statistics when the target uses them, running statistics never updated
        object.__setattr__(self, "bn_pairs", pairs)
        self.layers = parse_layers(model, layers)
        object.__setattr__(self, "target_features", _Features(model, self.layers))
        object.__setattr__(self, "source_features", _Features(source, self.layers, always=True))

    def pairs(self, inputs: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        target = self.target_features.take(self.layers)
        for mine, theirs in self.bn_pairs:
            mine.train(theirs.training)
        with torch.no_grad():
            self.source(inputs)
        source = self.source_features.take(self.layers)
        return list(zip(target, source))

    def close(self) -> None:
        self.target_features.close()
        self.source_features.close()


class FeatureMap(_Distillation):
    """``R = sum_l 1/2 ||F_l^t - F_l^s||_F^2``, summed over the batch (not divided by B), as the reference."""

    def penalty(self, inputs: torch.Tensor) -> torch.Tensor:
        total = inputs.new_zeros((), dtype=torch.float32)
        for t, s in self.pairs(inputs):
            total = total + 0.5 * (t.float() - s.float()).pow(2).sum()
        return total


class AFD(_Distillation):
    """Attention feature distillation: channel-attention-weighted distances to the source features."""

    def __init__(self, model, source, example: torch.Tensor, layers=None, hidden: int = 32):
        super().__init__(model, source, layers)
        with torch.no_grad():
            self.source(example)
        shapes = [f.shape for f in self.source_features.take(self.layers)]
        self.attention = nn.ModuleList(
            nn.Sequential(nn.Linear(h * w, int(hidden)), nn.ReLU(), nn.Linear(int(hidden), 1)) for _, _, h, w in shapes)

    def channel_attention(self, source_features: list[torch.Tensor]) -> list[torch.Tensor]:
        """rho per layer, (B, C), each row summing to 1."""
        return [torch.softmax(net(f.float().flatten(2)).squeeze(-1), dim=1)
                for net, f in zip(self.attention, source_features)]

    def penalty(self, inputs: torch.Tensor) -> torch.Tensor:
        pairs = self.pairs(inputs)
        rhos = self.channel_attention([s for _, s in pairs])
        total = inputs.new_zeros((), dtype=torch.float32)
        for (t, s), rho in zip(pairs, rhos):
            distance = torch.linalg.vector_norm((t.float() - s.float()).flatten(2), dim=2)  # (B, C)
            total = total + (rho * distance).sum() / t.shape[0]
        return total


def regularizer_specs() -> list[RegularizerSpec]:
    return [
        RegularizerSpec("l2-sp", lambda model, source, head, example, **o: L2SP(model, source, head, **o),
                        "L2-SP: squared distance of the weights to the starting point (Li et al. 2018)"),
        RegularizerSpec("fea-map", lambda model, source, head, example, **o: FeatureMap(model, source, **o),
                        "feature-map distillation: squared distance of hooked features to the source's"),
        RegularizerSpec("afd", lambda model, source, head, example, **o: AFD(model, source, example, **o),
                        "AFD: channel-attention-weighted feature distillation (Wang et al. 2020)"),
    ]


__all__ = ["AFD", "AFSGate", "FeatureMap", "L2SP", "regularizer_specs", "stage_last_convs"]
