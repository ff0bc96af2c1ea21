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
    images: tuple = field(default=(), repr=False, compare=False)  # the inputs as the model saw them (PIL), if known

    def __len__(self) -> int:
        return self.maps.shape[0]

    @property
    def topk(self) -> int:
        return self.maps.shape[1]

    def heatmap(self, i: int = 0, k: int = 0) -> np.ndarray:
        """The (H, W) input-size map of image ``i`` for its ``k``-th target."""
        return self.maps[i, k]

    def save(self, directory: str | Path, cmap: str | None = None) -> list[Path]:
        """Write ``<input>_<method>[_top<k>-<target>].png`` per image and target (the map over the image as
        the model saw it; the colormapped map alone when the images are not known, as from
        ``explain_tensors``), and ``<method>.npy`` holding ``maps``; returns the paths written
        (:func:`xviz.outputs.save_maps`)."""
        from xviz.outputs import save_maps

        return save_maps(self, directory, cmap)

    def titles(self) -> list[str]:
        """One title per (image, target), row-major: ``<input>: <target> (<prob>)``, plus the prediction
        when the target is another class."""
        out = []
        for i in range(len(self)):
            stem = Path(self.inputs[i]).name if i < len(self.inputs) and self.inputs[i] else f"image {i}"
            for k in range(self.topk):
                title = f"{stem}: {self.target_names[i][k]} ({self.scores[i, k]:.2f})"
                if self.targets[i, k] != self.predictions[i]:
                    title += f"\npredicted {self.prediction_names[i]} ({self.prediction_scores[i]:.2f})"
                out.append(title)
        return out

    def plot(self, alpha: float = 0.5, cmap: str | None = None, ncols: int | None = None):
        """A matplotlib figure: one overlay per image and target, titled with the target, its probability
        and (when it differs) the prediction."""
        from xviz.render import DEFAULT_CMAP, DEFAULT_SIGNED_CMAP, grid

        h, w = self.maps.shape[-2:]
        blank = np.zeros((h, w, 3), dtype=np.uint8)
        images = [self.images[i] if i < len(self.images) else blank for i in range(len(self)) for _ in range(self.topk)]
        heatmaps = [self.maps[i, k] for i in range(len(self)) for k in range(self.topk)]
        cmap = cmap or (DEFAULT_SIGNED_CMAP if self.signed else DEFAULT_CMAP)
        title = f"{self.method}" + (f" at {self.layer}" if self.layer else "") + f" ({self.model})"
        return grid(images, heatmaps, self.titles(), ncols=ncols or max(self.topk, min(4, len(heatmaps))),
                    alpha=alpha, cmap=cmap, signed=self.signed, title=title)

    def _repr_png_(self) -> bytes:
        """Jupyter shows an Explanation as the figure of :meth:`plot`."""
        import io

        import matplotlib.pyplot as plt

        fig = self.plot()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        plt.close(fig)
        return buffer.getvalue()
