"""Inputs to explain -> batches: decoding and preprocessing in ``torch.utils.data.DataLoader`` workers.

Each batch holds the consecutive inputs ``[start, start + batch_size)``; an input that cannot be read is
reported in the batch it belongs to (``skipped``) and left out of it, so batches keep their order and the
files their place. Image files are read in worker processes (``workers``; none for images already in
memory) while the model works on the batch before: at most ``2 * workers`` batches wait, so memory does
not grow with the number of inputs. A JPEG is decoded at a reduced scale (``Image.draft``: 1/2, 1/4 or
1/8, done by the JPEG decoder itself) when its shorter side stays at least the preprocessing's resize,
which makes decoding a large photo several times faster; the view then differs from a full-size decode
by about one grey level on average.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from xviz.errors import XvizError
from xviz.images import Preprocessing, read_image

IN_MEMORY = (Image.Image, np.ndarray, torch.Tensor)


def input_name(image) -> str:
    """The name an input is reported under: its path, a PIL image's file name, else ``""``."""
    if isinstance(image, Image.Image):
        return getattr(image, "filename", "") or ""
    return "" if isinstance(image, (np.ndarray, torch.Tensor)) else str(image)


def to_pil(image) -> Image.Image:
    """An RGB PIL image from a PIL image, an (H, W[, 3|4]) numpy array or a (3|1, H, W) tensor; arrays of
    floats are read as [0, 1], of integers as [0, 255]."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        if image.dim() == 4 and image.shape[0] == 1:
            image = image[0]
        if image.dim() != 3 or image.shape[0] not in (1, 3, 4):
            raise XvizError(f"an image tensor must be (3, H, W), got shape {tuple(image.shape)}; a preprocessed "
                            "batch goes to xviz.explain_tensors")
        image = image.detach().cpu().permute(1, 2, 0).numpy()
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise XvizError(f"an image array must be (H, W) or (H, W, 3), got shape {array.shape}")
    if array.dtype.kind == "f":
        if array.size and (array.min() < -1e-3 or array.max() > 1 + 1e-3):
            raise XvizError("a float image array must hold values in [0, 1] (pixels / 255), not normalised "
                            "values: xviz normalises with the model's preprocessing")
        array = np.rint(np.clip(array, 0, 1) * 255)
    return Image.fromarray(array.astype(np.uint8)).convert("RGB")


@dataclass
class LoadedBatch:
    """Consecutive inputs, decoded: ``names``, ``views`` (each image as the model sees it, before
    normalisation: PIL images), ``inputs`` (the normalised (N, 3, H, W) batch, None when no input
    could be read) and ``skipped`` (``(name, why)`` of the inputs that could not be read)."""

    names: list[str]
    views: list
    inputs: torch.Tensor | None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def pin_memory(self, *args) -> "LoadedBatch":
        """Page-locked inputs, for a fast copy to a GPU (what ``DataLoader(pin_memory=True)`` calls)."""
        if self.inputs is not None:
            self.inputs = self.inputs.pin_memory(*args)
        return self


class _Decoded(torch.utils.data.Dataset):
    """Input ``i`` as ``(name, view as a uint8 array, normalised tensor)``, or ``(name, why, None)``
    when it cannot be read: errors travel as values, so a worker's message reaches the user unchanged."""

    def __init__(self, images, preprocessing: Preprocessing):
        self.images, self.preprocessing = images, preprocessing

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        item = self.images[i]
        try:
            image = to_pil(item) if isinstance(item, IN_MEMORY) else read_image(item, self.preprocessing.resize)
        except XvizError as exc:
            return input_name(item), str(exc), None
        view = self.preprocessing.view(image)
        return input_name(item), np.asarray(view), self.preprocessing.normalize(view)


def _collate(items) -> LoadedBatch:
    names = [name for name, _, tensor in items if tensor is not None]
    views = [view for _, view, tensor in items if tensor is not None]
    skipped = [(name, why) for name, why, tensor in items if tensor is None]
    inputs = torch.stack([tensor for *_, tensor in items if tensor is not None]) if names else None
    return LoadedBatch(names, views, inputs, skipped)


def default_workers(images, batch_size: int) -> int:
    """Worker processes for decoding: none for a single batch or images already in memory, else up to 2
    (at most the CPU count minus one: the model needs the others)."""
    if len(images) <= batch_size or any(isinstance(item, IN_MEMORY) for item in images):
        return 0
    return max(1, min(2, (os.cpu_count() or 1) - 1))


def load_batches(images, preprocessing: Preprocessing, batch_size: int, skip_unreadable: bool = False,
                 workers: int | None = None, pin_memory: bool = False):
    """:class:`LoadedBatch` per ``batch_size`` consecutive inputs (paths, PIL images, arrays, tensors of
    pixels), in order, decoded by ``workers`` processes (default :func:`default_workers`). An unreadable
    input raises :class:`XvizError`, or with ``skip_unreadable`` is listed in its batch's ``skipped``."""
    workers = default_workers(images, batch_size) if workers is None else workers
    chunks = [range(start, min(start + batch_size, len(images))) for start in range(0, len(images), batch_size)]
    loader = torch.utils.data.DataLoader(_Decoded(images, preprocessing), batch_sampler=chunks,
                                         collate_fn=_collate, num_workers=workers, pin_memory=pin_memory,
                                         prefetch_factor=2 if workers else None)
    for batch in loader:
        if batch.skipped and not skip_unreadable:
            raise XvizError(batch.skipped[0][1])
        batch.views = [Image.fromarray(view) for view in batch.views]
        yield batch
