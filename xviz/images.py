"""Read any common image as RGB, and the preprocessing that turns it into a model input.

``read_image`` accepts JPEG, PNG, WebP, BMP and TIFF; honours the EXIF orientation; converts
grayscale, palette, RGBA (composited on white), CMYK and 16-bit images to 8-bit RGB.
``Preprocessing`` is data (resize, crop, mean, std), taken from the model's registered weights or
checkpoint, never hard-coded: ``view`` gives the image the model sees (for drawing overlays) and
``tensor`` the normalised input.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from xviz.errors import XvizError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
MIN_SIDE = 8
MAX_PIXELS = 400_000_000  # 20000 x 20000 decoded (checked from the header): at most 1.6 GB as RGBA
RESIZE_LIMIT = 16_000_000  # a resized image larger than this (a thin strip) is cropped while resizing


def read_image(path: str | Path, min_side: int | None = None) -> Image.Image:
    """Open ``path`` as an 8-bit RGB image, upright as its EXIF orientation says. With ``min_side``, a
    JPEG is decoded at the largest reduction (1/2, 1/4, 1/8: ``Image.draft``) that keeps its shorter side at
    least ``min_side`` pixels (what a resize to ``min_side`` needs); other formats are decoded in full."""
    path = Path(path)
    if not path.exists():
        raise XvizError(f"image `{path}` does not exist: check the path")
    if path.is_dir():
        raise XvizError(f"`{path}` is a folder, not an image")
    if path.stat().st_size == 0:
        raise XvizError(f"image `{path}` is empty (0 bytes)")
    old_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # checked below from the header, after a JPEG's reduced-scale draft
    try:
        with Image.open(path) as img:  # reads the header only
            if min(img.size) < MIN_SIDE:
                raise XvizError(
                    f"image `{path}` is {img.size[0]}x{img.size[1]} pixels: too small to explain "
                    f"(at least {MIN_SIDE}x{MIN_SIDE} needed)"
                )
            img.draft("RGB", _draft_size(img.size, min_side))  # JPEG: decode at a reduced scale
            width, height = img.size  # what will be decoded
            if width * height > MAX_PIXELS:
                raise XvizError(f"image `{path}` is {width}x{height} = {width * height:,} pixels, over the "
                                f"{MAX_PIXELS:,} xviz decodes: downscale it first")
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except UnidentifiedImageError:
        raise XvizError(
            f"`{path}` is not an image xviz can read (supported: {', '.join(IMAGE_SUFFIXES)})"
        ) from None
    except PermissionError:
        raise XvizError(f"image `{path}` cannot be read (permission denied): check its permissions") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise XvizError(f"image `{path}` is damaged or truncated ({exc}): re-export or replace it") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit


def _draft_size(size: tuple[int, int], min_side: int | None) -> tuple[int, int]:
    """The size ``Image.draft`` must keep: huge photos at least 4096 x 4096, and with ``min_side`` the
    image scaled so that its shorter side is ``min_side``."""
    if not min_side:
        return 4096, 4096
    scale = min_side / min(size)
    return min(4096, math.ceil(size[0] * scale)), min(4096, math.ceil(size[1] * scale))


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; 16/32-bit values are scaled, transparency goes on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or values.max() <= 65535 else values.max()
        if img.mode == "F":
            lo, hi = float(values.min()), float(values.max())
            values, top = values - lo, (hi - lo) or 1.0
        img = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def list_images(paths) -> list[Path]:
    """Expand files and folders (not recursive) into a sorted list of image files."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
            if not found:
                raise XvizError(f"folder `{p}` holds no images ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        else:
            out.append(p)
    return out


_INTERPOLATIONS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to ``resize``, center-crop ``crop`` x ``crop``, scale to [0, 1],
    then normalise: ``x = (pixel / 255 - mean) / std`` per channel.

    ``resize=None`` skips resizing; ``crop=None`` skips cropping.
    """

    resize: int | None
    crop: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"

    def view(self, img: Image.Image) -> Image.Image:
        """The image as the model sees it, before normalisation (what overlays are drawn on)."""
        if self.resize:
            # exactly torchvision's Resize(int) on a PIL image: the long side is truncated, not
            # rounded, and PIL resizes in one step (no reducing_gap), so inputs match the weights'
            # own transforms() pixel for pixel
            w, h = img.size
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = self.resize, max(1, int(self.resize * long / short))
            size = (new_short, new_long) if w <= h else (new_long, new_short)
            if self.crop and self.crop <= new_short and new_short * new_long > RESIZE_LIMIT:
                # an extreme strip: resize only the region the center crop keeps, not the whole image
                left = int(round((size[0] - self.crop) / 2.0)) * w / size[0]
                top = int(round((size[1] - self.crop) / 2.0)) * h / size[1]
                box = (left, top, left + self.crop * w / size[0], top + self.crop * h / size[1])
                return img.resize((self.crop, self.crop), _INTERPOLATIONS[self.interpolation], box=box)
            img = img.resize(size, _INTERPOLATIONS[self.interpolation])
        if self.crop:
            from torchvision.transforms.functional import center_crop

            img = center_crop(img, [self.crop, self.crop])  # pads with black when the image is smaller
        return img

    def normalize(self, view: Image.Image):
        """``(pixel / 255 - mean) / std`` as a (3, H, W) float tensor."""
        import torch

        x = (np.asarray(view, dtype=np.float32) / np.float32(255.0) - np.asarray(self.mean, np.float32)) \
            / np.asarray(self.std, np.float32)  # in numpy: no thread pool to wake for 150k values
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))

    def tensor(self, img: Image.Image):
        """The normalised (3, H, W) model input for ``img``."""
        return self.normalize(self.view(img))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        """The inverse of :meth:`to_dict`; a ValueError names the entry that is wrong."""
        if not isinstance(d, dict):
            raise ValueError(f"is {type(d).__name__} `{str(d)[:40]}`, not a table of resize, crop, mean, std")
        for key in ("resize", "crop"):
            value = d.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"`{key}` is `{value}`: must be a whole number of pixels, at least 1 (or absent)")
        for key in ("mean", "std"):
            values = d.get(key)
            if not isinstance(values, (list, tuple)) or len(values) not in (1, 3) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
                raise ValueError(f"`{key}` is `{values}`: must be three numbers (R, G, B) or one for all")
        if not all(v > 0 for v in d["std"]):
            raise ValueError(f"`std` is `{d['std']}`: every value must be positive (inputs are divided by it)")
        interpolation = d.get("interpolation", "bilinear")
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f"`interpolation` is `{interpolation}`: choose {', '.join(_INTERPOLATIONS)}")
        return cls(d.get("resize"), d.get("crop"), tuple(float(v) for v in d["mean"]),
                   tuple(float(v) for v in d["std"]), interpolation)

    @classmethod
    def from_transforms(cls, t) -> "Preprocessing":
        """From a torchvision weights' ``transforms()`` (``ImageClassification``)."""
        resize = t.resize_size[0] if isinstance(t.resize_size, (list, tuple)) else t.resize_size
        crop = t.crop_size[0] if isinstance(t.crop_size, (list, tuple)) else t.crop_size
        interpolation = getattr(t.interpolation, "value", str(t.interpolation))
        return cls(int(resize), int(crop), tuple(t.mean), tuple(t.std), interpolation)

