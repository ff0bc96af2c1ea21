"""Training transforms: the dataset's preprocessing plus named augmentations.

==========  ==============================================================================
``crop``    pad by ``crop_padding`` pixels (zeros) and take a random crop of the input size
``flip``    horizontal flip with probability 0.5
``rotate``  random rotation in [-rotation, rotation] degrees
``jitter``  colour jitter: brightness, contrast and saturation by ``jitter``, hue by jitter / 4
``rrc``     RandomResizedCrop to the input size, scale (``rrc_scale``, 1) (replaces resize + crop)
``cutout``  one ``cutout`` x ``cutout`` square of zeros at a random place (DeVries & Taylor 2017)
==========  ==============================================================================
"""

from __future__ import annotations

import torch
from torchvision import transforms as T

from xviz.errors import XvizError
from xviz.images import Preprocessing
from xviz.train.config import AUGMENTATIONS  # the `augment` setting's choices


class Cutout:
    """Zero one ``size`` x ``size`` square centred at a uniformly random pixel (clipped at borders)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y0, y1 = max(0, cy - self.size // 2), min(h, cy + self.size // 2)
        x0, x1 = max(0, cx - self.size // 2), min(w, cx + self.size // 2)
        x = x.clone()
        x[..., y0:y1, x0:x1] = 0.0
        return x


def resized(pre: Preprocessing, image_size: int | None) -> Preprocessing:
    """``pre`` at another input size (resize keeps the dataset's resize/crop ratio)."""
    if not image_size:
        return pre
    resize = round(image_size * pre.resize / pre.crop) if pre.resize and pre.crop else image_size
    return Preprocessing(resize, image_size, pre.mean, pre.std, pre.interpolation)


class SizedRandom:
    """Apply a torchvision random crop built for the image's own size (or ``size`` when given)."""

    def __init__(self, make, size: int | None = None):
        self.make, self.size = make, size

    def __call__(self, img):
        size = self.size or (img.size[1], img.size[0])
        return self.make(size)(img)


def train_transform(names, pre: Preprocessing, cfg):
    """PIL image -> normalised tensor with the augmentations ``names``, in a fixed sensible order."""
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise XvizError(f"unknown augmentation `{unknown[0]}`: choose from {', '.join(AUGMENTATIONS)}")
    steps = []
    if "rrc" in names:
        steps.append(SizedRandom(lambda size: T.RandomResizedCrop(size, scale=(cfg.rrc_scale, 1.0)), pre.crop))
    else:
        steps.append(pre.view)
        if "crop" in names:
            steps.append(SizedRandom(lambda size: T.RandomCrop(size, padding=cfg.crop_padding)))
    if "flip" in names:
        steps.append(T.RandomHorizontalFlip())
    if "rotate" in names:
        steps.append(T.RandomRotation(cfg.rotation))
    if "jitter" in names:
        steps.append(T.ColorJitter(cfg.jitter, cfg.jitter, cfg.jitter, min(0.5, cfg.jitter / 4)))
    steps.append(pre.normalize)
    if "cutout" in names:
        steps.append(Cutout(cfg.cutout))
    return T.Compose(steps)
