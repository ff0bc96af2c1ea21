"""The ``xviz`` command line: load the plugins, build the parser from their commands, run one.

A user's mistake ends in one line ``xviz: error: ...`` on stderr and exit code 2; a plugin that
cannot be loaded is one ``xviz: warning: ...`` line, and the rest keeps working. The commands
themselves live in :mod:`xviz.commands` (built-in) and in plugins, all added through the
``xviz_register_commands`` hook. Shell completion: argcomplete (docs/cli.md).
"""

# PYTHON_ARGCOMPLETE_OK  (lets argcomplete's global completion call xviz)

from __future__ import annotations

import os
import sys
import warnings

from xviz import __version__
from xviz.errors import XvizError


def _warn_in_one_line(message, category, filename, lineno, file=None, line=None):
    from xviz.registry import PluginWarning

    if issubclass(category, PluginWarning):
        print(f"xviz: warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _complete(parser) -> None:
    """Answer a shell's completion request (argcomplete sets ``_ARGCOMPLETE``), then exit."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        import argcomplete
    except ImportError:
        return
    argcomplete.autocomplete(parser)


def main(argv=None, pm=None) -> int:
    """Run ``xviz ARGV``: the exit code. ``pm``: the plugin manager to use (default: a new one with the
    built-ins and the installed plugins; :mod:`xviz.testing` passes its own)."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    if argv == ["--version"]:  # needs no plugin
        print(f"xviz {__version__}")
        return 0
    with warnings.catch_warnings():
        from xviz.registry import PluginWarning

        warnings.simplefilter("always", PluginWarning)
        warnings.showwarning = _warn_in_one_line
        try:
            from xviz.commands import build_parser
            from xviz.registry import get_plugin_manager

            pm = pm if pm is not None else get_plugin_manager()
            parser = build_parser(pm)
            _complete(parser)
            args = parser.parse_args(argv)
            if not getattr(args, "func", None):
                parser.print_help()
                return 0
            args.pm = pm
            return args.func(args) or 0
        except XvizError as exc:
            message = str(exc).strip().splitlines()[-1] if str(exc).strip() else "failed"
            message = message.removeprefix("xviz.errors.XvizError: ")  # re-raised from a DataLoader worker
            print(f"xviz: error: {message}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("xviz: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
