"""The result every method returns: maps, the targets they explain, and where they came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def library_versions() -> dict[str, str]:
    import torch
    import torchvision

    from xviz import __version__

    return {"xviz": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__}


@dataclass(frozen=True)
class Explanation:
    """One method's explanation of N images for K targets each.

    * ``raw``: (N, K, h, w) float32, the method's map at the explained layer's resolution
      (e.g. ``ReLU(sum_k w_k A_k)`` for GradCAM), unnormalised.
    * ``maps``: (N, K, H, W) float32 at the input size: ``raw`` bilinearly upsampled, then min-max
      normalised per map to [0, 1] (a constant map becomes 0). Signed methods scale by the largest
      magnitude instead, giving [-1, 1]. A method with a fixed display range (``Method.display_range``,
      e.g. sigmoid attention in its reference view) maps that range to [0, 1] instead, for every map alike.
    * ``targets``: (N, K) class indices explained; ``target_names`` their names; ``scores``
      (N, K) the softmax probability of each target.
    * ``predictions``/``prediction_names``/``prediction_scores``: the top-1 class of each image.
    """

    method: str
    layer: str | None
    model: str
    raw: np.ndarray
    maps: np.ndarray
    targets: np.ndarray
    target_names: tuple[tuple[str, ...], ...]
    scores: np.ndarray
    predictions: np.ndarray
    prediction_names: tuple[str, ...]
    prediction_scores: np.ndarray
    inputs: tuple[str, ...] = ()
    signed: bool = False
    versions: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.maps.shape[0]

    @property
    def topk(self) -> int:
        return self.maps.shape[1]

    def heatmap(self, i: int = 0, k: int = 0) -> np.ndarray:
        """The (H, W) input-size map of image ``i`` for its ``k``-th target."""
        return self.maps[i, k]

    def save(self, directory: str | Path, cmap: str | None = None) -> list[Path]:
        """Write ``<input>_<method>[_top<k>-<target>].png`` (colormapped map) per image and target, and
        ``<method>.npy`` holding ``maps``; returns the paths written (:func:`xviz.outputs.save_maps`)."""
        from xviz.outputs import save_maps

        return save_maps(self, directory, cmap)
