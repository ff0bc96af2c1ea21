"""What an explanation method is: a name and one function from a shared ``Context`` to raw maps.

Methods requested together see the same ``Context``: one forward pass, and (for gradient methods)
one ``torch.autograd.grad`` call to the target layer's activation that yields the gradients of
all K targets of every image at once.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn


class Method:
    """Base class of explanation methods; subclasses set ``name`` and implement ``compute``.

    * ``name``: unique registry key (``xviz explain --method NAME``).
    * ``summary``: one line for ``xviz methods``.
    * ``uses_layer``: needs the target layer's activation (``ctx.activations``).
    * ``signed``: maps may be negative (drawn with a diverging colormap).
    * ``reference``: the paper.
    """

    name: str = ""
    summary: str = ""
    uses_layer: bool = True
    signed: bool = False
    reference: str = ""

    def compute(self, ctx: "Context") -> torch.Tensor | dict[str, torch.Tensor]:
        """Return raw maps of shape (N, K, h, w): one per image and target in ``ctx.targets``; or a
        dict ``{layer name: maps}`` for a method that explains several layers at once."""
        raise NotImplementedError

    def check(self, model: nn.Module, pm=None) -> None:
        """Raise :class:`xviz.errors.XvizError` when the method cannot apply to ``model`` (before any work)."""

    def observe(self, model: nn.Module):
        """A context manager active during the shared forward pass; what its ``__enter__`` returns is
        ``ctx.observed[self.name]`` (e.g. hooks that record a module's outputs). Default: nothing."""
        return contextlib.nullcontext()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class Context:
    """Everything a method may use, computed at most once per batch.

    * ``model``: the module (eval mode, parameters frozen while explaining).
    * ``inputs``: (N, 3, H, W) normalised images.
    * ``logits``: (N, classes) raw class scores of the forward pass.
    * ``targets``: (N, K) class indices to explain.
    * ``layer``: the target layer's name; ``activations``: its (N, C, h, w) output ``A``.
    * ``gradients``: (N, K, C, h, w), ``dS_t / dA`` for each target's raw score ``S_t``;
      computed on first access by a single ``torch.autograd.grad`` call.
    * ``observed``: ``{method name: what its observe() recorded during the forward pass}``.
    """

    def __init__(self, model: nn.Module, inputs: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                 layer: str | None, activations: torch.Tensor | None):
        self.model = model
        self.inputs = inputs
        self.logits = logits
        self.targets = targets
        self.layer = layer
        self.activations = activations
        self.observed: dict = {}
        self._gradients: torch.Tensor | None = None

    @property
    def gradients(self) -> torch.Tensor:
        if self._gradients is None:
            self._gradients = target_gradients(self.logits, self.targets, self.activations)
        return self._gradients

    def release(self) -> None:
        """Drop the autograd graph and cached tensors."""
        self.logits = self.activations = self._gradients = None
        self.observed = {}


def target_gradients(logits: torch.Tensor, targets: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
    """``d logits[n, targets[n, k]] / d activation[n]`` for all n, k, as (N, K, *activation[0].shape).

    Sums over the batch are exact because images do not interact in eval mode. K > 1 uses one
    batched (vmapped) backward; if an operation has no batching rule, it falls back to K calls.
    """
    scores = logits.gather(1, targets)  # (N, K)
    n, k = scores.shape
    if k == 1:
        (grad,) = torch.autograd.grad(scores.sum(), activation)
        return grad.unsqueeze(1)
    selectors = torch.eye(k, dtype=scores.dtype, device=scores.device)[:, None, :].expand(k, n, k)
    try:
        (grad,) = torch.autograd.grad(scores, activation, grad_outputs=selectors, is_grads_batched=True,
                                      retain_graph=True)
    except RuntimeError:
        grad = torch.stack([torch.autograd.grad(scores[:, j].sum(), activation, retain_graph=True)[0]
                            for j in range(k)])
    return grad.transpose(0, 1)


class FunctionMethod(Method):
    """A method made from a plain function ``fn(ctx) -> (N, K, h, w)``; see :func:`method`."""

    def __init__(self, fn: Callable[[Context], torch.Tensor], name: str, summary: str = "",
                 uses_layer: bool = True, signed: bool = False, reference: str = ""):
        self.fn, self.name, self.summary = fn, name, summary
        self.uses_layer, self.signed, self.reference = uses_layer, signed, reference

    def compute(self, ctx: Context) -> torch.Tensor:
        return self.fn(ctx)


def method(name: str, summary: str = "", **options) -> Callable[[Callable], FunctionMethod]:
    """Decorator turning ``fn(ctx) -> (N, K, h, w)`` into a :class:`Method` called ``name``."""

    def wrap(fn: Callable[[Context], torch.Tensor]) -> FunctionMethod:
        return FunctionMethod(fn, name, summary or (fn.__doc__ or "").strip().split("\n")[0], **options)

    return wrap
