"""Classifier heads for torchvision backbones: linear, or fastai's concat-pool head.

``concat``: ``AdaptiveConcatPool2d`` (max and average pooling, concatenated) -> flatten -> BatchNorm1d
-> Dropout(0.25) -> Linear(2C, 512) -> ReLU -> BatchNorm1d -> Dropout(0.5) -> Linear(512, classes).
Heads are swapped in place of the backbone's own pooling and classifier attributes, so layer names
(``layer4``, ``features.29``) stay what torchvision calls them.
"""

from __future__ import annotations

import torch
from torch import nn

from xviz.errors import XvizError

HEADS = ("linear", "concat")


class AdaptiveConcatPool2d(nn.Module):
    """``cat([adaptive_max_pool(x), adaptive_avg_pool(x)], dim=1)``: (N, C, h, w) -> (N, 2C, 1, 1)."""

    def forward(self, x):
        return torch.cat([nn.functional.adaptive_max_pool2d(x, 1), nn.functional.adaptive_avg_pool2d(x, 1)], 1)


def concat_head(channels: int, num_classes: int, hidden: int = 512) -> nn.Sequential:
    """The classifier part of the concat-pool head (pooling is done by ``AdaptiveConcatPool2d``)."""
    return nn.Sequential(
        nn.Flatten(), nn.BatchNorm1d(2 * channels), nn.Dropout(0.25), nn.Linear(2 * channels, hidden),
        nn.ReLU(inplace=True), nn.BatchNorm1d(hidden), nn.Dropout(0.5), nn.Linear(hidden, num_classes),
    )


def set_head(model: nn.Module, name: str, family: str, num_classes: int) -> nn.Module:
    """Give a torchvision ``resnet*``/``vgg*``/``densenet*`` classifier the head ``name``."""
    if name not in HEADS:
        raise XvizError(f"unknown head `{name}`: choose one of {', '.join(HEADS)}")
    if family == "resnet":
        channels = model.fc.in_features
        if name == "linear":
            model.fc = nn.Linear(channels, num_classes)
        else:
            model.avgpool, model.fc = AdaptiveConcatPool2d(), concat_head(channels, num_classes)
    elif family == "vgg":
        channels = model.features[-3].out_channels if isinstance(model.features[-3], nn.Conv2d) \
            else next(m.out_channels for m in reversed(model.features) if isinstance(m, nn.Conv2d))
        if name == "linear":
            model.avgpool = nn.AdaptiveAvgPool2d(1)
            model.classifier = nn.Sequential(nn.Flatten(), nn.Linear(channels, num_classes))
        else:
            model.avgpool, model.classifier = AdaptiveConcatPool2d(), concat_head(channels, num_classes)
    elif family == "densenet":
        channels = model.classifier.in_features
        if name == "linear":
            model.classifier = nn.Linear(channels, num_classes)
        else:  # densenet pools functionally after `features`: pool inside `features` instead
            model.features.add_module("relu_head", nn.ReLU())
            model.features.add_module("concat_pool", AdaptiveConcatPool2d())
            model.classifier = concat_head(channels, num_classes)
    else:
        raise XvizError(f"heads can be changed on resnet, vgg and densenet models, not `{family}`")
    return model
