"""The plugin manager factory and the name -> object registries built from its hooks.

Built-in plugins (the command modules ``xviz.commands.*``, then ``plugins/xviz_*``) are registered
first, then third-party plugins from the ``xviz`` entry-point group, so a third-party
implementation is called before a built-in one.

A third-party plugin that fails to load (its import raises, or a hook implementation does not match
the contract) is skipped with one warning (:class:`PluginWarning`) naming it and saying how to skip
it; the other plugins keep working. A name registered by two plugins is an error only where that
name is used (:func:`lookup`).

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
import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points

import pluggy

from xviz import __version__, hookspecs
from xviz.console import did_you_mean
from xviz.errors import XvizError

ENTRY_POINT_GROUP = "xviz"
BUILTIN_COMMANDS = ("xviz.commands.explain", "xviz.commands.listing", "xviz.commands.train",
                    "xviz.commands.evaluate", "xviz.commands.gallery", "xviz.commands.misclassified",
                    "xviz.commands.report", "xviz.commands.lr_sweep", "xviz.commands.augment_preview",
                    "xviz.commands.model_diagram")
BUILTIN_PLUGINS = ("xviz_zoo", "xviz_cam", "xviz_captum", "xviz_attention", "xviz_afs")


class PluginWarning(UserWarning):
    """A third-party plugin was skipped, or two plugins claim one name (the CLI prints it as one line)."""


@dataclass(frozen=True)
class PluginInfo:
    """Where a registered plugin comes from."""

    name: str
    source: str  # "built-in" or "entry point of <distribution>"
    version: str


class PluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers where each plugin came from, and which were skipped."""

    def __init__(self):
        super().__init__("xviz")
        self.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.skipped: dict[str, str] = {}  # plugin name -> why it was not loaded

    def register_plugin(self, plugin, name: str, source: str, version: str):
        self.register(plugin, name=name)
        self.infos[name] = PluginInfo(name, source, version)

    def is_builtin(self, name: str) -> bool:
        return name in self.infos and self.infos[name].source == "built-in"


def get_plugin_manager(*, builtins: bool = True, entrypoints: bool = True) -> PluginManager:
    """Build a fresh plugin manager: built-ins, then the ``xviz`` entry points."""
    pm = PluginManager()
    if builtins:
        for module_name in (*BUILTIN_COMMANDS, *BUILTIN_PLUGINS):
            pm.register_plugin(importlib.import_module(module_name), module_name, "built-in", __version__)
    if entrypoints:
        _load_entry_points(pm)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:  # a plugin registered in code (not an entry point)
        raise XvizError(f"plugin `{_plugin_name(pm, exc.plugin)}` is invalid: {_one_line(exc)}") from None
    return pm


@functools.lru_cache(maxsize=1)
def default_plugin_manager() -> PluginManager:
    """The manager used when a function is given none: built once per process, on first use."""
    return get_plugin_manager()


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _plugin_name(pm: PluginManager, plugin) -> str:
    return pm.get_name(plugin) or getattr(plugin, "__name__", repr(plugin))


def _skip(pm: PluginManager, name: str, dist_name: str, what: str, loading: list[str]) -> None:
    """Record and warn that entry-point plugin ``name`` is skipped, saying how to load only the others."""
    others = ",".join(n for n in loading if n != name)
    message = (f"plugin `{name}` (from {dist_name}) {what}; it is skipped: fix or uninstall it "
               f"(pip uninstall {dist_name}), or load only the others with XVIZ_LOAD_PLUGINS={others}")
    pm.skipped[name] = message
    warnings.warn(message, PluginWarning, stacklevel=3)


def _wanted_entry_points() -> tuple[dict, set | None]:
    wanted = os.environ.get("XVIZ_LOAD_PLUGINS")
    wanted = None if wanted is None else {n.strip() for n in wanted.split(",") if n.strip()}
    if os.environ.get("XVIZ_DISABLE_PLUGIN_AUTOLOAD") and wanted is None:
        return {}, set()
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if wanted is not None and wanted - found.keys():
        warnings.warn(f"XVIZ_LOAD_PLUGINS names `{', '.join(sorted(wanted - found.keys()))}`, which no installed "
                      f"plugin provides; installed: {', '.join(sorted(found)) or 'none'}", PluginWarning, stacklevel=3)
    return found, wanted


def _load_entry_points(pm: PluginManager) -> None:
    found, wanted = _wanted_entry_points()
    loading = [name for name in sorted(found) if wanted is None or name in wanted]
    for name in loading:
        ep = found[name]
        if pm.has_plugin(name) or pm.is_blocked(name):
            continue
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else "?"
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken third-party plugin must not take xviz down
            _skip(pm, name, dist_name, f"failed to load ({type(exc).__name__}: {_one_line(exc)})", loading)
            continue
        try:
            pm.register_plugin(plugin, name, f"entry point of {dist_name}", dist.version if dist else "?")
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            if pm.is_registered(plugin):
                pm.unregister(plugin)
            pm.infos.pop(name, None)
            _skip(pm, name, dist_name, f"is invalid: {_one_line(exc)}", loading)


class Registered(dict):
    """``{name: item}`` of one registration hook, for names that one plugin alone registers;
    ``plugins`` maps each name to its plugin, ``clashes`` each name claimed twice to its plugins."""

    def __init__(self, items=(), plugins=None, clashes=None, what: str = "item"):
        super().__init__(items)
        self.plugins: dict[str, str] = dict(plugins or {})
        self.clashes: dict[str, list[str]] = dict(clashes or {})
        self.what = what

    def clash_message(self, name: str) -> str:
        first, *others = self.clashes[name]
        return (f"{self.what} `{name}` is registered by both plugin `{first}` and plugin `{others[0]}`: "
                "uninstall one, or choose plugins with XVIZ_LOAD_PLUGINS")


def registered(pm: PluginManager, hook_name: str, what: str) -> Registered:
    """Call one registration hook plugin by plugin (built-ins first): the declared items by name.

    A name claimed by two plugins goes to ``clashes`` (an error where it is used); a third-party
    implementation that raises is skipped with a :class:`PluginWarning`."""
    items, plugins, clashes = {}, {}, {}
    for impl in getattr(pm.hook, hook_name).get_hookimpls():  # in registration order: built-ins first
        try:
            declared = list(impl.function() or ())
        except Exception as exc:
            if pm.is_builtin(impl.plugin_name):
                raise
            warnings.warn(f"plugin `{impl.plugin_name}` failed in {hook_name} ({type(exc).__name__}: "
                          f"{_one_line(exc)}); its {what}s are skipped: fix or uninstall it", PluginWarning)
            continue
        for item in declared:
            if item.name in clashes:
                clashes[item.name].append(impl.plugin_name)
            elif item.name in items:
                clashes[item.name] = [plugins.pop(item.name), impl.plugin_name]
                del items[item.name]
            else:
                items[item.name], plugins[item.name] = item, impl.plugin_name
    return Registered(items, plugins, clashes, what)


def _pm(pm):
    return pm if pm is not None else default_plugin_manager()


def method_declarations(pm=None) -> Registered:
    """Every method as its plugin declared it (a :class:`xviz.specs.MethodSpec` or a Method), not loaded."""
    return registered(_pm(pm), "xviz_register_methods", "method")


def load_method(item):
    """The Method a declaration stands for (a Method is its own declaration)."""
    from xviz.specs import MethodSpec

    return item.method() if isinstance(item, MethodSpec) else item


def methods(pm=None) -> Registered:
    """All explanation methods, loaded: ``{name: Method}`` (imports every method's module)."""
    declared = method_declarations(pm)
    return Registered({n: load_method(d) for n, d in declared.items()}, declared.plugins, declared.clashes, "method")


def method(name: str, pm=None):
    """The method called ``name``, loaded; an error naming close names when there is none."""
    return load_method(lookup(method_declarations(pm), name, "method", "xviz methods"))


def models(pm=None) -> Registered:
    """All models: ``{name: ModelSpec}``."""
    return registered(_pm(pm), "xviz_register_models", "model")


def datasets(pm=None) -> Registered:
    """All datasets: ``{name: DatasetSpec}``."""
    return registered(_pm(pm), "xviz_register_datasets", "dataset")


def regularizers(pm=None) -> Registered:
    """All training regularisers: ``{name: RegularizerSpec}``."""
    return registered(_pm(pm), "xviz_register_regularizers", "regulariser")


def lookup(registry: dict, name: str, what: str, listing_command: str):
    """``registry[name]``, or an error: the name is claimed by two plugins, or is unknown (naming the
    closest registered names)."""
    if name in registry:
        return registry[name]
    if name in getattr(registry, "clashes", {}):
        raise XvizError(registry.clash_message(name))
    raise XvizError(f"unknown {what} `{name}`: {did_you_mean(name, registry)}`{listing_command}` lists them")
