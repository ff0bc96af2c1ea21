"""The ``attention`` method: the attention maps of every attention block, from the shared forward pass."""

import contextlib

import torch

from xviz import registry
from xviz.capture import find_layer
from xviz.errors import XvizError
from xviz.methods import Context, Method


class AttentionMaps(Method):
    """The attention maps of every attention block, as the network normalises them.

    Works for any model that follows the attention protocol: an attribute ``attention_layers`` (module
    names) whose modules return the raw compatibility scores ``c`` (N, 1, h, w) (or a tuple starting
    with them) and have a method ``normalized(c)`` giving the map the network uses (softmax over
    space, or sigmoid). One Explanation per block; maps do not depend on the target.

    ``raw`` is always ``normalized(c)``. ``view`` chooses how ``maps`` show it: ``"min-max"`` (the
    default) scales every map to [0, 1]; ``"reference"`` draws them as the authors' code does
    (SaoYan/LearnToPayAttention ``visualize_attn_*``): softmax maps min-max scaled, sigmoid maps
    unscaled on a fixed 0-1 scale (a block is sigmoid when its ``normalize`` attribute says so).
    """

    name = "attention"
    uses_layer = False
    reference = "https://arxiv.org/abs/1804.02391"
    VIEWS = ("min-max", "reference")

    def __init__(self, view: str = "min-max", name: str | None = None, summary: str | None = None):
        if view not in self.VIEWS:
            raise XvizError(f"unknown attention view `{view}`: choose {' or '.join(self.VIEWS)}")
        self.view = view
        self.name, self.summary = name or self.name, summary or self.summary

    def display_range(self, model, layer):
        """(0, 1) for a sigmoid block in the reference view; None (min-max per map) otherwise."""
        if self.view == "reference" and getattr(find_layer(model, layer), "normalize", None) == "sigmoid":
            return (0.0, 1.0)
        return None

    def check(self, model, pm=None) -> None:
        if not getattr(model, "attention_layers", None):
            layer_methods = sorted(n for n, m in registry.methods(pm or registry.default_plugin_manager()).items()
                                   if m.uses_layer)
            raise XvizError(f"the model has no attention blocks (no `attention_layers`): `{self.name}` does not apply; "
                            f"use {', '.join(layer_methods)}")

    @contextlib.contextmanager
    def observe(self, model):
        maps: dict[str, torch.Tensor] = {}

        def record(name):
            def hook(module, inputs, output):
                c = output[0] if isinstance(output, (tuple, list)) else output
                maps[name] = module.normalized(c).detach().clone()  # a copy: the network may change c in place
            return hook

        handles = [find_layer(model, name).register_forward_hook(record(name)) for name in model.attention_layers]
        try:
            yield maps
        finally:
            for handle in handles:
                handle.remove()

    def compute(self, ctx: Context) -> dict[str, torch.Tensor]:
        k = ctx.targets.shape[1]
        return {name: a.float().expand(-1, k, -1, -1) for name, a in ctx.observed[self.name].items()}


def reference_view() -> AttentionMaps:
    """``attention-reference``: the attention maps drawn as the authors' code draws them."""
    return AttentionMaps("reference", name="attention-reference")
