"""Testing a plugin without installing it: register it in a plugin manager of its own and run ``xviz``
in-process, as a user would run it.

A pytest fixture, ``xviz_cli``, once a test module (or the top-level ``conftest.py``) says
``pytest_plugins = ["xviz.testing"]``::

    import my_plugin

    pytest_plugins = ["xviz.testing"]

    def test_listed(xviz_cli):
        xviz_cli.register(my_plugin)                   # a module or object with @xviz.hookimpl functions
        result = xviz_cli.run("methods")
        assert result.code == 0 and "mymethod" in result.out

and a plain helper for any test runner: ``run_xviz("methods", plugins=[my_plugin])``.
Each :class:`XvizRunner` holds a fresh plugin manager: the built-ins, no installed plugin unless
asked (``entrypoints=True``), and what the test registers.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    """What one ``xviz`` run did: its exit ``code`` and what it printed to stdout (``out``) and stderr (``err``)."""

    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


class XvizRunner:
    """A plugin manager for one test, and ``xviz`` run in-process against it."""

    def __init__(self, *, builtins: bool = True, entrypoints: bool = False):
        from xviz.registry import get_plugin_manager

        self.pm = get_plugin_manager(builtins=builtins, entrypoints=entrypoints)

    def register(self, plugin, name: str | None = None):
        """Register ``plugin`` (a module, class instance, ...) as xviz would an installed one; a misspelled
        hook or a wrong hook argument raises ``pluggy.PluginValidationError``."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        self.pm.register_plugin(plugin, name, "registered by a test", "?")
        self.pm.check_pending()
        return plugin

    def register_entry_point(self, name: str, value: str):
        """Load ``value`` (``"package.module"`` or ``"package.module:object"``) exactly as xviz loads an
        ``xviz`` entry point called ``name``, and register it."""
        from importlib.metadata import EntryPoint

        return self.register(EntryPoint(name, value, "xviz").load(), name)

    def run(self, *args) -> Result:
        """Run ``xviz ARGS``; ``--help`` and argparse's errors give their exit code too."""
        from xviz.cli import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args], pm=self.pm)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        return Result(code, out.getvalue(), err.getvalue())


def run_xviz(*args, plugins=(), builtins: bool = True, entrypoints: bool = False) -> Result:
    """Run ``xviz ARGS`` in-process with ``plugins`` registered (and the built-ins): a :class:`Result`."""
    runner = XvizRunner(builtins=builtins, entrypoints=entrypoints)
    for plugin in plugins:
        runner.register(plugin)
    return runner.run(*args)


try:
    import pytest
except ImportError:  # pragma: no cover - pytest is only needed for the fixture
    pytest = None

if pytest is not None:
    @pytest.fixture
    def xviz_cli() -> XvizRunner:
        """An :class:`XvizRunner`: built-ins only; ``xviz_cli.register(plugin)``, then ``xviz_cli.run(...)``."""
        return XvizRunner()
