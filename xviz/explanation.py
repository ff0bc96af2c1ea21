"""The result every method returns: maps, the targets they explain, and where they came from."""

from __future__ import annotations

from collections import Counter
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
        ``<method>.npy`` holding ``maps``; returns the paths written."""
        directory = Path(directory)
        cmap = cmap or (DEFAULT_SIGNED_CMAP if self.signed else DEFAULT_CMAP)
        written = []
        inputs = [self.inputs[i] if i < len(self.inputs) else "" for i in range(len(self))]
        for i, stem in enumerate(output_stems(inputs)):
            for k in range(self.topk):
                name = output_name(stem, self.method, k, self.topk, self.target_names[i][k])
                written.append(save_png(colorize(self.maps[i, k], cmap, self.signed), directory / f"{name}.png"))
        written.append(save_npy(self.maps, directory / f"{self.method}.npy"))
        return written


def save_npy(array: np.ndarray, path: Path) -> Path:
    return atomic_write(path, lambda tmp: np.save(tmp, np.asarray(array)))


def output_stems(inputs) -> list[str]:
    """A distinct file-name stem per input: its stem; its folder's name and stem where two inputs
    share a stem; a counter beyond that; ``image<i>`` for unnamed inputs."""
    stems = [safe_name(Path(p).stem) if p else f"image{i}" for i, p in enumerate(inputs)]
    clash = Counter(stems)
    stems = [safe_name(f"{Path(p).parent.name}-{Path(p).stem}") if p and clash[s] > 1 else s
             for p, s in zip(inputs, stems)]
    seen: Counter = Counter()
    out = []
    for s in stems:
        seen[s] += 1
        out.append(s if seen[s] == 1 else f"{s}-{seen[s]}")
    return out


def output_name(stem: str, method: str, k: int, topk: int, target_name: str, layer: str | None = None) -> str:
    """``<stem>_<method>``, plus ``-<layer>`` for a method explaining several layers, plus
    ``_top<k>-<target>`` when several targets are explained."""
    name = f"{stem}_{method}" + (f"-{safe_name(layer)}" if layer else "")
    return name + (f"_top{k + 1}-{safe_name(target_name)}" if topk > 1 else "")


def safe_name(text: str) -> str:
    """``text`` with characters unsafe in file names replaced by ``-``."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in text)
