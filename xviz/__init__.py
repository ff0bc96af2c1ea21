"""xviz: plugin-based visual explanations for PyTorch image models.

    >>> import xviz
    >>> model = xviz.load_model("xviz-demo")
    >>> [exp] = xviz.explain(model, ["bird.png"], methods=["gradcampp"])
"""

import pluggy

from xviz.specs import attributes_of

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("xviz")
"""Decorator marking a function as an implementation of an `xviz_*` hook."""

_LAZY = {
    "explain": "xviz.explainer",
    "explain_tensors": "xviz.explainer",
    "Explanation": "xviz.explanation",
    "load_model": "xviz.models",
    "LoadedModel": "xviz.models",
    "ModelSpec": "xviz.specs",
    "Method": "xviz.methods",
    "MethodSpec": "xviz.specs",
    "lazy": "xviz.specs",
    "get_plugin_manager": "xviz.registry",
    "XvizError": "xviz.errors",
}


__getattr__ = attributes_of(_LAZY)  # keep `import xviz` light: torch loads on first use

__all__ = ["__version__", "hookimpl", *_LAZY]
