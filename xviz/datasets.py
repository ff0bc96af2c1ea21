"""Dataset registry entries: a name, a builder, class names and normalisation.

Plugins register :class:`xviz.specs.DatasetSpec` through ``xviz_register_datasets``.
"""

from __future__ import annotations

from xviz import registry
from xviz.specs import DatasetSpec


def load_dataset(name: str, split: str = "train", root=None, pm=None, **options):
    """Build dataset ``name``'s ``split``; returns ``(dataset, spec)``."""
    specs = registry.datasets(pm or registry.default_plugin_manager())
    spec = registry.lookup(specs, name, "dataset", "xviz datasets")
    return spec.build(split, root=root, **options), spec
