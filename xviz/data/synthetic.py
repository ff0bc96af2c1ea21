"""Part-annotated synthetic images: ground truth for where an explanation should look.

Each image shows one creature (an elliptic body and a round head) on a cluttered background of
random shapes and noise. The six classes share body and head and differ only by one *part*:

=========  ======================================
horned     two horns on the head
tailed     a tail at the back of the body
winged     a wing above the body
spotted    dark spots on the body
striped    stripes across the body
legged     four legs under the body
=========  ======================================

Every sample carries boolean masks for ``object`` (the whole creature), ``body``, ``head`` and
``part`` (the class-defining part). Images are a pure function of ``(seed, split, index)``: no
files, identical on every machine; the train and test splits never share an image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage import draw

CLASSES = ("horned", "tailed", "winged", "spotted", "striped", "legged")
SPLITS = {"train": 0, "test": 1}
DEFAULT_SIZES = {"train": 3000, "test": 600}
MASK_NAMES = ("object", "body", "head", "part")


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # (H, W, 3) uint8
    label: int
    masks: dict  # name -> (H, W) bool

    @property
    def class_name(self) -> str:
        return CLASSES[self.label]


def _color(rng, lo=40, hi=255) -> np.ndarray:
    return rng.integers(lo, hi, size=3).astype(np.float32)


def _contrasting(rng, other: np.ndarray) -> np.ndarray:
    for _ in range(20):
        c = _color(rng)
        if np.abs(c - other).sum() > 200:
            return c
    return 255.0 - other


def _clip(rr, cc, size):
    keep = (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size)
    return rr[keep], cc[keep]


def _clutter(img: np.ndarray, rng) -> None:
    size = img.shape[0]
    for _ in range(rng.integers(6, 12)):
        kind = rng.integers(3)
        r0, c0 = rng.integers(0, size, 2)
        if kind == 0:
            rr, cc = draw.ellipse(r0, c0, rng.integers(2, 8), rng.integers(2, 8), shape=img.shape[:2])
        elif kind == 1:
            rr, cc = draw.rectangle((r0, c0), extent=tuple(rng.integers(2, 12, 2)), shape=img.shape[:2])
            rr, cc = rr.ravel(), cc.ravel()
        else:
            r1, c1 = rng.integers(0, size, 2)
            rr, cc = draw.line(r0, c0, r1, c1)
            rr, cc = _clip(rr, cc, size)
        img[rr, cc] = 0.6 * _color(rng) + 0.4 * img[rr, cc]


def render(label: int, rng: np.random.Generator, size: int = 64) -> Sample:
    """Draw one creature of class ``label`` with ``rng``; returns the image and its masks."""
    shape = (size, size)
    img = np.empty((size, size, 3), np.float32)
    img[:] = _color(rng, 0, 200)
    img += rng.normal(0, 12, size=img.shape).astype(np.float32)
    _clutter(img, rng)

    s = size / 64.0
    facing = 1 if rng.random() < 0.5 else -1  # head on the right (+1) or left (-1)
    ry, rx = rng.uniform(5.5, 7.0) * s, rng.uniform(10.0, 13.0) * s
    cy = rng.uniform(0.42, 0.6) * size
    cx = size / 2 + rng.uniform(-6, 6) * s
    body_color = _color(rng, 60, 255)
    part_color = _contrasting(rng, body_color)

    masks = {name: np.zeros(shape, bool) for name in MASK_NAMES}
    rr, cc = draw.ellipse(cy, cx, ry, rx, shape=shape)
    masks["body"][rr, cc] = True
    hr = rng.uniform(4.0, 5.0) * s
    hx, hy = cx + facing * (rx + hr * 0.6), cy - ry * 0.6
    rr, cc = draw.disk((hy, hx), hr, shape=shape)
    masks["head"][rr, cc] = True

    part = masks["part"]
    name = CLASSES[label]
    if name == "horned":
        for dx in (-0.6, 0.6):
            bx = hx + dx * hr
            rr, cc = draw.polygon([hy - hr * 0.5, hy - hr * 0.5, hy - hr * 2.3],
                                  [bx - 1.8 * s, bx + 1.8 * s, bx + facing * 0.8 * s], shape=shape)
            part[rr, cc] = True
    elif name == "tailed":
        tx = cx - facing * rx * 0.9
        rr, cc = draw.polygon([cy - 1.5 * s, cy + 1.5 * s, cy - ry * 1.6 - 2 * s, cy - ry * 1.6 - 5 * s],
                              [tx, tx, tx - facing * 9 * s, tx - facing * 6 * s], shape=shape)
        part[rr, cc] = True
    elif name == "winged":
        rr, cc = draw.polygon([cy - ry * 0.4, cy - ry * 0.4, cy - ry - 9 * s],
                              [cx - 6 * s, cx + 6 * s, cx - facing * 4 * s], shape=shape)
        part[rr, cc] = True
    elif name == "spotted":
        for dx in (-0.5, 0.0, 0.5):
            rr, cc = draw.disk((cy + rng.uniform(-1, 1) * s, cx + dx * rx), 2.2 * s, shape=shape)
            part[rr, cc] = True
    elif name == "striped":
        for dx in (-0.45, 0.0, 0.45):
            x0 = cx + dx * rx
            rr, cc = draw.rectangle((cy - ry, x0 - 1.2 * s), (cy + ry, x0 + 1.2 * s), shape=shape)
            part[rr.ravel(), cc.ravel()] = True
        part &= masks["body"]
    elif name == "legged":
        for dx in (-0.6, -0.2, 0.2, 0.6):
            x0 = cx + dx * rx
            rr, cc = draw.rectangle((cy + ry * 0.6, x0 - 1.0 * s), (cy + ry + 7 * s, x0 + 1.0 * s), shape=shape)
            part[rr.ravel(), cc.ravel()] = True
    else:
        raise ValueError(f"unknown class index {label}")

    img[masks["body"]] = body_color
    img[masks["head"]] = 0.75 * body_color
    img[part] = part_color
    shading = rng.normal(0, 6, size=img.shape).astype(np.float32)
    img = np.clip(img + shading, 0, 255).astype(np.uint8)
    masks["body"] &= ~part
    masks["head"] &= ~part
    masks["object"] = masks["body"] | masks["head"] | part
    return Sample(img, label, masks)


def sample(index: int, split: str = "train", seed: int = 0, size: int = 64) -> Sample:
    """Image ``index`` of ``split``: class ``index % 6``, drawn from ``rng((seed, split, index))``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {sorted(SPLITS)}")
    rng = np.random.default_rng([seed, SPLITS[split], index])
    return render(index % len(CLASSES), rng, size)


class SyntheticParts:
    """A ``torch`` dataset over :func:`sample`: ``(transform(PIL image), label)`` pairs.

    ``masks(i)`` gives the part masks of item ``i``; ``image(i)`` the PIL image.
    """

    def __init__(self, split: str = "train", size: int | None = None, seed: int = 0, image_size: int = 64,
                 transform=None):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: use one of {sorted(SPLITS)}")
        for name, value, low in (("size", size, 0), ("seed", seed, 0), ("image_size", image_size, 16)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
                raise ValueError(f"`{name}` must be a whole number of at least {low}, not {value!r}")
        self.split, self.seed, self.image_size = split, seed, image_size
        self.length = DEFAULT_SIZES[split] if size is None else size
        self.transform = transform  # PIL image -> tensor
        self.classes = list(CLASSES)

    def __len__(self) -> int:
        return self.length

    def sample(self, index: int) -> Sample:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return sample(index, self.split, self.seed, self.image_size)

    def image(self, index: int):
        from PIL import Image

        return Image.fromarray(self.sample(index).image)

    def masks(self, index: int) -> dict:
        return self.sample(index).masks

    def __getitem__(self, index: int):
        s = self.sample(index)
        from PIL import Image

        return self.transform(Image.fromarray(s.image)), s.label
