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


def run_dataset(model, root=None, split: str = "test", transform=None, pm=None):
    """The dataset the training run behind ``model`` (a :class:`xviz.models.LoadedModel` from a checkpoint)
    used, with the split its run folder recorded: ``(dataset, name)``, or None when the checkpoint names
    no registered dataset. ``root`` replaces the run's ``--data`` (the same images, moved)."""
    from xviz.train.run_folder import read_split_record, run_folder_of

    config = (getattr(model, "checkpoint", None) or {}).get("config") or {}
    name = config.get("dataset")
    specs = registry.datasets(pm or registry.default_plugin_manager())
    if not name or name not in specs:
        return None
    options = dict(config.get("dataset_options") or {})
    record = read_split_record(run_folder_of(model.source)) if model.source else None
    if record is not None:
        options["split_record"] = record
    data = specs[name].build(split, root=root or config.get("data"), transform=transform, **options)
    return data, name
