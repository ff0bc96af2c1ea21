"""The result every method returns: maps, the targets they explain, and where they came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xviz.render import DEFAULT_CMAP, DEFAULT_SIGNED_CMAP, atomic_write, colorize, save_png


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
    * ``maps``: (N, K, H, W) float32 at the input size: ``raw`` min-max normalised per map to
      [0, 1] (a constant map becomes 0), then bilinearly upsampled. Signed methods scale by the
      largest magnitude instead, giving [-1, 1].
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
        """Write ``<input>_<method>[_<target>].png`` (colormapped map) per image and target, and
        ``<method>.npy`` holding ``maps``; returns the paths written."""
        directory = Path(directory)
        cmap = cmap or (DEFAULT_SIGNED_CMAP if self.signed else DEFAULT_CMAP)
        written = []
        for i in range(len(self)):
            stem = Path(self.inputs[i]).stem if i < len(self.inputs) and self.inputs[i] else f"image{i}"
            for k in range(self.topk):
                suffix = f"_{self.target_names[i][k]}" if self.topk > 1 else ""
                path = directory / f"{stem}_{self.method}{safe_name(suffix)}.png"
                written.append(save_png(colorize(self.maps[i, k], cmap, self.signed), path))
        written.append(save_npy(self.maps, directory / f"{self.method}.npy"))
        return written


def save_npy(array: np.ndarray, path: Path) -> Path:
    return atomic_write(path, lambda tmp: np.save(tmp, np.asarray(array)))


def safe_name(text: str) -> str:
    """``text`` with characters unsafe in file names replaced by ``-``."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in text)
