"""The xviz plugin contract: every hook a plugin may implement.

Each function below is a *specification*: its signature and docstring are the reference.
Hooks are always called with keyword arguments; an implementation may accept any subset of
them. Implement one with ``@xviz.hookimpl`` in a module or class that you register through the
``xviz`` entry-point group::

    # pyproject.toml of your plugin
    [project.entry-points.xviz]
    my_plugin = "my_plugin"

Built-in plugins (``plugins/xviz_*``) and the built-in commands (``xviz.commands.*``) use exactly
these hooks.

xviz imports every plugin module whenever it starts, ``xviz --help`` included, so a plugin module
should only *declare* what it offers (:mod:`xviz.specs`) and import torch, torchvision or other
heavy libraries when a method, model or command is used: :class:`xviz.specs.MethodSpec`'s
``"module:attribute"`` loader, ``xviz.lazy("module:function")`` for builders and command functions.
A plugin that fails to import, or whose hook implementation does not match its specification, is
skipped with one warning; a name two plugins register is an error only where it is used.
"""

import pluggy

hookspec = pluggy.HookspecMarker("xviz")


@hookspec
def xviz_register_methods():
    """Return explanation methods this plugin provides.

    :returns: a list of declarations, :class:`xviz.specs.MethodSpec` (``name``, ``"module:attribute"``
        of the :class:`xviz.methods.Method` subclass, ``summary``): the method's module is imported
        when the method is used. A :class:`xviz.methods.Method` instance is accepted too (its module
        is then imported at start-up). Each method's ``name`` must be unique across all plugins;
        two plugins claiming one name is an error, naming both, where that name is used.
    """


@hookspec
def xviz_register_models():
    """Return models this plugin provides.

    :returns: a list of :class:`xviz.specs.ModelSpec`: a name; a builder
        ``build(num_classes, **options) -> nn.Module`` (random initialisation; ``options`` such as
        ``head="concat"`` are stored in checkpoints); its preprocessing and class names (either may
        be ``xviz.lazy(...)``, with ``num_classes`` given); optionally
        ``pretrained(weights) -> LoadedModel``. Builders are called when the model is used:
        ``xviz.lazy("module:function")`` keeps their imports out of start-up. Names are unique
        across plugins.
    """


@hookspec
def xviz_register_datasets():
    """Return datasets this plugin provides.

    :returns: a list of :class:`xviz.specs.DatasetSpec`: a name; a builder
        ``build(split, root=None, transform=None, **options) -> torch.utils.data.Dataset`` yielding
        ``(transform(image), label)``; the class names, the preprocessing and the default training
        augmentations. Names are unique.
    """


@hookspec
def xviz_register_regularizers():
    """Return training regularisers this plugin provides (``xviz train --reg NAME``).

    :returns: a list of :class:`xviz.specs.RegularizerSpec`: a name, a summary and
        ``build(model, source, head, example, **options) -> Regularizer``, whose
        ``penalty(inputs)`` the training loop adds to the loss as ``lambda * R`` after each
        forward pass (see :mod:`xviz.regularizers` for what each argument holds). Names are unique.
    """


@hookspec(firstresult=True)
def xviz_default_target_layer(model, model_name):
    """Choose the layer to explain when the user names none.

    :param model: the ``torch.nn.Module`` being explained.
    :param model_name: its registered name, or ``None`` for a bare module.
    :returns: a module name from ``model.named_modules()`` or ``None`` to let another plugin
        (or xviz's fallback: the last module with a spatial output) decide.
        Stops at the first non-``None`` result.
    """


@hookspec
def xviz_register_commands(subparsers):
    """Add subcommands to the ``xviz`` command line (every built-in command is added this way too).

    :param subparsers: the ``argparse`` sub-parser collection of the ``xviz`` parser. Add a
        parser with ``subparsers.add_parser(name, help=...)`` and set
        ``parser.set_defaults(func=callable)``; the callable receives the parsed
        ``argparse.Namespace`` (``args.pm`` is the plugin manager) and returns an exit code
        (``None`` means 0). Raise :class:`xviz.errors.XvizError` for a user's mistake. Declaring
        the flags must stay light: import what the command needs inside the callable, or give
        ``func=xviz.lazy("module:function")``. A command name two plugins add is an error when
        that command is run.
    """
