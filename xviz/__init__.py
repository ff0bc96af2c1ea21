"""xviz: plugin-based visual explanations for PyTorch image models.

    >>> import xviz
    >>> model = xviz.load_model("xviz-demo")
    >>> [exp] = xviz.explain(model, ["bird.png"], methods=["gradcampp"])
"""

from importlib import import_module

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("xviz")
"""Decorator marking a function as an implementation of an `xviz_*` hook."""

_LAZY = {
    "explain": "xviz.explainer",
    "explain_tensors": "xviz.explainer",
    "Explanation": "xviz.explanation",
    "load_model": "xviz.models",
    "LoadedModel": "xviz.models",
    "ModelSpec": "xviz.models",
    "Method": "xviz.methods",
    "get_plugin_manager": "xviz.registry",
    "XvizError": "xviz.errors",
}


def __getattr__(name):  # keep `import xviz` light: torch loads on first use
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'xviz' has no attribute {name!r}")


__all__ = ["__version__", "hookimpl", *_LAZY]
