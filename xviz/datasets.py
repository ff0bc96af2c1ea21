"""Dataset registry entries: a name, a builder, class names and normalisation.

Plugins register :class:`DatasetSpec` through ``xviz_register_datasets``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from xviz import registry
from xviz.images import Preprocessing


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset.

    * ``build(split, root=None, transform=None, **options) -> Dataset`` yielding
      ``(transform(pil_image), label)``; ``split`` is ``"train"`` or ``"test"``; ``root`` the local
      folder holding the data (``None``: the dataset's default place, downloading when it can);
      ``transform`` defaults to ``preprocessing.tensor``. A dataset that is missing raises
      :class:`xviz.errors.XvizError` saying where to put it.
    * ``class_names``: index = label (may be empty when only known once the data is read; the
      built dataset's ``classes`` attribute is then authoritative).
    * ``preprocessing``: the evaluation transform (resize, crop, normalisation) a model trained on
      it expects; ``augment``: the default training augmentations (names understood by
      :func:`xviz.train.augment.train_transform`, e.g. ``("crop", "flip")``).
    """

    name: str
    build: Callable[..., object]
    class_names: Sequence[str]
    preprocessing: Preprocessing
    summary: str = ""
    augment: tuple[str, ...] = ("flip",)


def load_dataset(name: str, split: str = "train", root=None, pm=None, **options):
    """Build dataset ``name``'s ``split``; returns ``(dataset, spec)``."""
    specs = registry.datasets(pm or registry.default_plugin_manager())
    spec = registry.lookup(specs, name, "dataset", "xviz datasets")
    return spec.build(split, root=root, **options), spec
