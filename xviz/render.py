"""Drawing explanations with matplotlib colormaps: overlays, panels, grids; atomic PNG writes.

A heatmap is a float array: in [0, 1] for maps, or in [-1, 1] for signed attributions (drawn
with a diverging colormap centred on zero: white is 0). ``cmap=None`` picks the default for the
map's kind (jet, or bwr for signed maps). Panels and per-layer figures carry a colourbar;
:func:`with_colorbar` adds one to any overlay.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from xviz.errors import XvizError

DEFAULT_CMAP = "jet"
DEFAULT_SIGNED_CMAP = "bwr"


def default_cmap(cmap: str | None, signed: bool = False) -> str:
    """``cmap``, or the default for the map's kind: diverging (zero in the middle) for signed maps."""
    return cmap or (DEFAULT_SIGNED_CMAP if signed else DEFAULT_CMAP)


def get_cmap(name: str | None = None):
    import matplotlib

    name = default_cmap(name)
    try:
        return matplotlib.colormaps[name]
    except KeyError:
        raise XvizError(
            f"unknown colormap `{name}`: use a matplotlib colormap such as jet, turbo, viridis, inferno, bwr"
        ) from None


def colorize(heatmap: np.ndarray, cmap: str | None = None, signed: bool = False) -> np.ndarray:
    """Map a (H, W) heatmap to (H, W, 3) uint8 RGB; signed maps go from [-1, 1] to [0, 1] first."""
    values = np.asarray(heatmap, dtype=np.float32)
    values = (values + 1.0) / 2.0 if signed else values
    rgba = get_cmap(default_cmap(cmap, signed))(np.clip(values, 0.0, 1.0))
    return (rgba[..., :3] * 255.0 + 0.5).astype(np.uint8)


def _as_rgb_array(image) -> np.ndarray:
    return np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)


def _fit(heatmap: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    if heatmap.shape == size_hw:
        return heatmap
    resized = Image.fromarray(np.asarray(heatmap, dtype=np.float32), mode="F").resize(
        (size_hw[1], size_hw[0]), Image.BILINEAR
    )
    return np.asarray(resized)


def check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise XvizError(f"`--alpha {alpha}` is outside [0, 1]: 0 shows only the image, 1 only the heatmap")


def overlay(image, heatmap: np.ndarray, alpha: float = 0.5, cmap: str | None = None, signed: bool = False) -> np.ndarray:
    """``(1 - alpha) * image + alpha * colormap(heatmap)`` as uint8 RGB at the image's size."""
    check_alpha(alpha)
    rgb = _as_rgb_array(image).astype(np.float32)
    heat = colorize(_fit(heatmap, rgb.shape[:2]), cmap, signed).astype(np.float32)
    return ((1.0 - alpha) * rgb + alpha * heat + 0.5).astype(np.uint8)


def enlarge(picture: np.ndarray, min_side: int = 224) -> np.ndarray:
    """Repeat pixels by the smallest integer factor that makes the shorter side >= ``min_side``."""
    factor = -(-min_side // min(picture.shape[:2]))
    return picture if factor <= 1 else picture.repeat(factor, axis=0).repeat(factor, axis=1)


def row_figure(pictures, titles, suptitle: str = "", size: float = 3.0):
    """A figure showing RGB ``pictures`` side by side, each under its title, ``suptitle`` above."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(pictures), figsize=(size * len(pictures), size + 0.4), squeeze=False)
    for ax, picture, title in zip(axes[0], pictures, titles):
        ax.imshow(picture)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    return fig


def mosaic_figure(pictures, titles, suptitle: str = "", ncols: int = 6, size: float = 1.6):
    """Pictures (PIL or RGB arrays) in rows of ``ncols``, each under its title, ``suptitle`` above."""
    import matplotlib.pyplot as plt

    ncols = max(1, min(ncols, len(pictures)))
    nrows = -(-len(pictures) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, (size + 0.3) * nrows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(pictures):
            ax.imshow(_as_rgb_array(pictures[i]))
            ax.set_title(titles[i][:18], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    return fig


def add_colorbar(fig, axes, cmap: str | None = None, signed: bool = False):
    """A vertical colourbar beside ``axes`` for maps drawn with ``cmap``: 0 to 1, or -1 to 1 (0 in the
    middle) for signed maps."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    mappable = plt.cm.ScalarMappable(Normalize(-1.0 if signed else 0.0, 1.0), get_cmap(default_cmap(cmap, signed)))
    boxes = [ax.get_position() for ax in np.ravel(axes)]
    x1, y0, y1 = max(b.x1 for b in boxes), min(b.y0 for b in boxes), max(b.y1 for b in boxes)
    inch = 1.0 / fig.get_figwidth()  # placed after the layout, beside the axes: they keep their size
    cax = fig.add_axes((x1 + 0.12 * inch, y0 + 0.1 * (y1 - y0), 0.12 * inch, 0.8 * (y1 - y0)))
    bar = fig.colorbar(mappable, cax=cax)
    bar.set_ticks([-1, 0, 1] if signed else [0, 0.5, 1])
    bar.ax.tick_params(labelsize=8)
    bar.set_label("attribution (signed)" if signed else "relative importance", fontsize=8)
    return bar


def panel(image, heatmap: np.ndarray, title: str = "", alpha: float = 0.5, cmap: str | None = None, signed: bool = False):
    """A figure of three panels: image | heatmap | overlay (with its colourbar), ``title`` above."""
    pictures = [_as_rgb_array(image), colorize(heatmap, cmap, signed), overlay(image, heatmap, alpha, cmap, signed)]
    fig = row_figure(pictures, ["image", "heatmap", "overlay"], title)
    add_colorbar(fig, fig.axes[:3], cmap, signed)
    return fig


def layers_figure(image, heatmaps, titles, suptitle: str = "", alpha: float = 0.5, cmap: str | None = None):
    """The original image followed by one overlay per heatmap (e.g. per attention layer), in a row,
    with one colourbar for them all."""
    overlays = [overlay(image, heat, alpha, cmap) for heat in heatmaps]
    fig = row_figure([_as_rgb_array(image), *overlays], ["image", *titles], suptitle, size=2.8)
    add_colorbar(fig, fig.axes, cmap)
    return fig


def with_colorbar(picture: np.ndarray, cmap: str | None = None, signed: bool = False) -> np.ndarray:
    """An overlay (RGB array) with a vertical colour scale on its right: a strip of the colormap with
    its ends (0 and 1, or -1 and 1) and its middle labelled."""
    from PIL import ImageDraw

    height = picture.shape[0]
    ramp = np.linspace(1.0, -1.0 if signed else 0.0, height, dtype=np.float32)[:, None].repeat(12, axis=1)
    strip = colorize(ramp, cmap, signed)
    canvas = Image.new("RGB", (picture.shape[1] + 50, height), "white")
    canvas.paste(Image.fromarray(np.asarray(picture, dtype=np.uint8)), (0, 0))
    canvas.paste(Image.fromarray(strip), (picture.shape[1] + 6, 0))
    draw = ImageDraw.Draw(canvas)
    labels = ("1", "0", "-1") if signed else ("1", "0.5", "0")
    for label, y in zip(labels, (0, height // 2 - 5, height - 11)):
        draw.text((picture.shape[1] + 22, y), label, fill="black")
    return np.asarray(canvas)


def grid(images, heatmaps, titles=None, ncols: int = 4, alpha: float = 0.5, cmap: str | None = None, signed: bool = False,
         colorbar: bool = True, title: str = ""):
    """A figure with one overlay per image, ``ncols`` per row, each with its title (``title`` above all)."""
    import matplotlib.pyplot as plt

    n = len(images)
    if n == 0:
        raise XvizError("nothing to draw: the grid got no images")
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.9 * nrows), squeeze=False, layout="constrained")
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(overlay(images[i], heatmaps[i], alpha, cmap, signed))
            if titles:
                ax.set_title(titles[i], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    if colorbar:
        fig.get_layout_engine().execute(fig)  # the constrained layout places the axes (no title over a row) ...
        fig.set_layout_engine("none")  # ... and keeps them there while the colourbar goes beside them
        add_colorbar(fig, axes, cmap, signed)
    return fig


def atomic_write(path: str | Path, write) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_png(picture, path: str | Path, dpi: int = 110, compress_level: int = 6) -> Path:
    """Write an RGB array, a PIL image or a matplotlib figure (closed afterwards) as a PNG
    (``compress_level``: zlib's 0-9, for arrays and images)."""
    if hasattr(picture, "savefig"):
        import matplotlib.pyplot as plt

        try:
            return atomic_write(path, lambda tmp: picture.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.1))
        finally:
            plt.close(picture)
    image = picture if isinstance(picture, Image.Image) else Image.fromarray(np.asarray(picture, dtype=np.uint8))
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG", compress_level=compress_level))
