"""The plugin manager factory and the name -> object registries built from its hooks.

Built-in plugins (``plugins/xviz_*``) are registered first, then third-party plugins from the
``xviz`` entry-point group, so a third-party implementation is called before a built-in one.

Environment:

* ``XVIZ_LOAD_PLUGINS``: comma-separated entry-point names; only these third-party plugins load
  (empty: none). Built-ins always load.
* ``XVIZ_DISABLE_PLUGIN_AUTOLOAD``: any non-empty value stops entry-point discovery (plugins named
  in ``XVIZ_LOAD_PLUGINS`` still load).
"""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass
from importlib.metadata import entry_points

import pluggy

from xviz import __version__, hookspecs
from xviz.errors import XvizError

ENTRY_POINT_GROUP = "xviz"
BUILTIN_PLUGINS = ("xviz_zoo", "xviz_cam", "xviz_captum", "xviz_attention", "xviz_afs")


@dataclass(frozen=True)
class PluginInfo:
    """Where a registered plugin comes from."""

    name: str
    source: str  # "built-in" or "entry point of <distribution>"
    version: str


class PluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers where each plugin came from."""

    def __init__(self):
        super().__init__("xviz")
        self.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}

    def register_plugin(self, plugin, name: str, source: str, version: str):
        self.register(plugin, name=name)
        self.infos[name] = PluginInfo(name, source, version)


def get_plugin_manager(*, builtins: bool = True, entrypoints: bool = True) -> PluginManager:
    """Build a fresh plugin manager: built-ins, then the ``xviz`` entry points."""
    pm = PluginManager()
    if builtins:
        for module_name in BUILTIN_PLUGINS:
            pm.register_plugin(importlib.import_module(module_name), module_name, "built-in", __version__)
    if entrypoints:
        _load_entry_points(pm)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise XvizError(_invalid_plugin(pm, exc)) from None
    return pm


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _invalid_plugin(pm: PluginManager, exc: pluggy.PluginValidationError, name: str | None = None,
                    source: str | None = None) -> str:
    name = name or pm.get_name(exc.plugin) or getattr(exc.plugin, "__name__", repr(exc.plugin))
    source = source or (pm.infos[name].source if name in pm.infos else "a plugin")
    return (f"plugin `{name}` ({source}) is invalid: {_one_line(exc)}; "
            "fix or uninstall it, or set XVIZ_DISABLE_PLUGIN_AUTOLOAD=1")


@functools.lru_cache(maxsize=1)
def default_plugin_manager() -> PluginManager:
    """The manager used when a function is given none: built once per process, on first use."""
    return get_plugin_manager()


def _load_entry_points(pm: PluginManager) -> None:
    wanted = os.environ.get("XVIZ_LOAD_PLUGINS")
    wanted = None if wanted is None else {n.strip() for n in wanted.split(",") if n.strip()}
    if os.environ.get("XVIZ_DISABLE_PLUGIN_AUTOLOAD") and wanted is None:
        return
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if wanted is not None:
        missing = sorted(wanted - found.keys())
        if missing:
            raise XvizError(
                f"XVIZ_LOAD_PLUGINS names `{', '.join(missing)}`, which no installed plugin provides; "
                f"installed: {', '.join(sorted(found)) or 'none'}"
            )
    for name, ep in sorted(found.items()):
        if wanted is not None and name not in wanted:
            continue
        if pm.has_plugin(name) or pm.is_blocked(name):
            continue
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else "?"
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken third-party plugin must not look like an xviz crash
            raise XvizError(
                f"plugin `{name}` (from {dist_name}) failed to load: {type(exc).__name__}: {exc}; "
                "fix or uninstall it, or set XVIZ_DISABLE_PLUGIN_AUTOLOAD=1"
            ) from exc
        try:
            pm.register_plugin(plugin, name, f"entry point of {dist_name}", dist.version if dist else "?")
        except pluggy.PluginValidationError as exc:
            raise XvizError(_invalid_plugin(pm, exc, name, f"entry point of {dist_name}")) from None


def registered(pm: PluginManager, hook_name: str, what: str) -> dict:
    """Call one registration hook plugin by plugin: ``{name: (item, plugin name)}``; names must be
    unique across plugins."""
    found: dict = {}
    for impl in reversed(getattr(pm.hook, hook_name).get_hookimpls()):  # built-ins first
        for item in impl.function() or ():
            if item.name in found:
                raise XvizError(
                    f"{what} `{item.name}` is registered by both plugin `{found[item.name][1]}` and plugin "
                    f"`{impl.plugin_name}`: uninstall one, or choose plugins with XVIZ_LOAD_PLUGINS"
                )
            found[item.name] = (item, impl.plugin_name)
    return found


def _collect(pm: PluginManager, hook_name: str, what: str) -> dict:
    return {name: item for name, (item, _) in registered(pm, hook_name, what).items()}


def methods(pm: PluginManager):
    """All explanation methods: ``{name: Method}``."""
    return _collect(pm, "xviz_register_methods", "method")


def models(pm: PluginManager):
    """All models: ``{name: ModelSpec}``."""
    return _collect(pm, "xviz_register_models", "model")


def datasets(pm: PluginManager):
    """All datasets: ``{name: DatasetSpec}``."""
    return _collect(pm, "xviz_register_datasets", "dataset")


def regularizers(pm: PluginManager):
    """All training regularisers: ``{name: RegularizerSpec}``."""
    return _collect(pm, "xviz_register_regularizers", "regulariser")


def lookup(registry: dict, name: str, what: str, listing_command: str):
    """``registry[name]``, or an error naming the closest registered names."""
    if name in registry:
        return registry[name]
    import difflib

    close = difflib.get_close_matches(name, registry, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(f'`{c}`' for c in close)}? " if close else ""
    raise XvizError(f"unknown {what} `{name}`: {hint}`{listing_command}` lists them")
