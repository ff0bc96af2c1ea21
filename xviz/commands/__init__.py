"""The ``xviz`` parser, gathered from the ``xviz_register_commands`` hook, and running a command in-process.

Every command, built-in or a plugin's, is added the same way: a plugin module implements
``xviz_register_commands(subparsers)``. The built-in ones are the modules of this package, registered
as built-in plugins (:data:`xviz.registry.BUILTIN_COMMANDS`). A module's top level stays light (argparse
only); what a command needs it imports when it runs.

A command name that two plugins add is an error only when that command is run; a third-party plugin
whose hook raises is skipped with a warning, and the other commands keep working.
"""

from __future__ import annotations

import argparse
import warnings

from xviz import __version__
from xviz.errors import XvizError


class _Commands:
    """The sub-parser collection as one plugin sees it: remembers which plugin added which command and
    turns a second plugin's command of the same name into a clash instead of an argparse error."""

    def __init__(self, subparsers, plugin: str, owners: dict, clashes: dict):
        self._subparsers, self._plugin, self._owners, self._clashes = subparsers, plugin, owners, clashes

    def add_parser(self, name: str, **kwargs):
        names = [name, *kwargs.get("aliases", ())]
        taken = [n for n in names if n in self._owners]
        if taken:
            self._clashes.setdefault(taken[0], [self._owners[taken[0]]]).append(self._plugin)
            return argparse.ArgumentParser(prog=f"xviz {name}", add_help=False)  # configured, never used
        for n in names:
            self._owners[n] = self._plugin
        return self._subparsers.add_parser(name, **kwargs)

    def __getattr__(self, attribute):
        return getattr(self._subparsers, attribute)


def complete_methods(prefix: str, **kwargs) -> list[str]:
    """Shell completion of ``--method``: the registered method names (from their declarations)."""
    from xviz import registry

    return [name for name in sorted(registry.method_declarations()) if name.startswith(prefix)]


def complete_models(prefix: str, **kwargs) -> list[str]:
    """Shell completion of ``--model``: the registered model names."""
    from xviz import registry

    return [name for name in sorted(registry.models()) if name.startswith(prefix)]


def add_model_flags(parser, default_model: str | None = "resnet50", weights_default: str | None = "DEFAULT",
                    checkpoint_help: str = "an xviz checkpoint or run folder (overrides --model)") -> None:
    """``--model``, ``--checkpoint`` and ``--weights``: where the model comes from (see :func:`xviz.models.load_model`)."""
    shown = f"default: {default_model}; " if default_model else ""
    parser.add_argument("--model", default=default_model,
                        help=f"registered model name ({shown}see `xviz models`)").completer = complete_models
    parser.add_argument("--checkpoint", help=checkpoint_help)
    parser.add_argument("--weights", default=weights_default,
                        help="DEFAULT (pretrained), none (random) or a weights PATH")


def _clash(name: str, plugins: list[str]):
    def refuse(args):
        raise XvizError(f"command `{name}` is registered by both plugin `{plugins[0]}` and plugin `{plugins[1]}`: "
                        "uninstall one, or choose plugins with XVIZ_LOAD_PLUGINS")
    return refuse


def build_parser(pm) -> argparse.ArgumentParser:
    """The ``xviz`` parser: ``--version`` and one sub-parser per registered command."""
    from xviz.registry import PluginWarning

    parser = argparse.ArgumentParser(prog="xviz", description="Visual explanations for PyTorch image models.")
    parser.add_argument("--version", action="version", version=f"xviz {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    owners: dict[str, str] = {}
    clashes: dict[str, list[str]] = {}
    for impl in pm.hook.xviz_register_commands.get_hookimpls():  # in registration order: built-ins first
        commands = _Commands(sub, impl.plugin_name, owners, clashes)
        try:
            impl.function(*[commands for _ in impl.argnames])
        except Exception as exc:
            if pm.is_builtin(impl.plugin_name):
                raise
            warnings.warn(f"plugin `{impl.plugin_name}` failed to add its commands ({type(exc).__name__}: {exc}); "
                          "they are skipped: fix or uninstall it", PluginWarning)
    for name, plugins in clashes.items():
        sub.choices[name].set_defaults(func=_clash(name, plugins))
    return parser


def command_names(pm) -> set[str]:
    """The names of the registered commands."""
    return {name for name in _subparsers(build_parser(pm)).choices}


def _subparsers(parser):
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def run_command(argv: list[str], pm) -> int:
    """Run ``xviz ARGV`` in this process with plugin manager ``pm``: the command's exit code. A user's
    mistake raises :class:`XvizError`; a wrong flag makes argparse exit (``SystemExit``, code 2)."""
    parser = build_parser(pm)
    args = parser.parse_args([str(a) for a in argv])
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    args.pm = pm
    return args.func(args) or 0
