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

    * ``build(split, root=None, **options) -> Dataset`` yielding ``(image_tensor, label)``;
      ``split`` is ``"train"`` or ``"test"``; ``root`` a local folder where the data lives.
    * ``class_names``: index = label. ``preprocessing``: what a model trained on it expects.
    """

    name: str
    build: Callable[..., object]
    class_names: Sequence[str]
    preprocessing: Preprocessing
    summary: str = ""


def load_dataset(name: str, split: str = "train", root=None, pm=None, **options):
    """Build dataset ``name``'s ``split``; returns ``(dataset, spec)``."""
    specs = registry.datasets(pm or registry.default_plugin_manager())
    spec = registry.lookup(specs, name, "dataset", "xviz datasets")
    return spec.build(split, root=root, **options), spec
