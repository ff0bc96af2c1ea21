"""What an explanation method is: a name and one function from a shared ``Context`` to raw maps.

Methods requested together see the same ``Context``: one forward pass, and (for gradient methods)
one ``torch.autograd.grad`` call to the target layer's activation that yields the gradients of
all K targets of every image at once.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable

import torch
from torch import nn


class Method:
    """Base class of explanation methods; subclasses set ``name`` and implement ``compute``.

    * ``name``: unique registry key (``xviz explain --method NAME``).
    * ``summary``: one line for ``xviz methods``.
    * ``uses_layer``: needs the target layer's activation (``ctx.activations``).
    * ``uses_input_gradient``: needs gradients to the inputs (``ctx.input_gradients``, or its own
      ``torch.autograd.grad`` to ``ctx.inputs``): the shared forward pass then records the graph from the
      inputs, so no method pays a forward pass of its own for them.
    * ``signed``: maps may be negative (drawn with a diverging colormap).
    * ``reference``: the paper.
    """

    name: str = ""
    summary: str = ""
    uses_layer: bool = True
    uses_input_gradient: bool = False
    signed: bool = False
    reference: str = ""

    def compute(self, ctx: "Context") -> torch.Tensor | dict[str, torch.Tensor]:
        """Return raw maps of shape (N, K, h, w): one per image and target in ``ctx.targets``; or a
        dict ``{layer name: maps}`` for a method that explains several layers at once."""
        raise NotImplementedError

    def check(self, model: nn.Module, pm=None) -> None:
        """Raise :class:`xviz.errors.XvizError` when the method cannot apply to ``model`` (before any work)."""

    def display_range(self, model: nn.Module, layer: str | None) -> tuple[float, float] | None:
        """A fixed ``(lo, hi)`` on which ``Explanation.maps`` show this method's raw maps at ``layer``
        (``(x - lo) / (hi - lo)`` clipped to [0, 1]; signed: ``x / max(|lo|, |hi|)`` clipped to [-1, 1]), for
        raw values with a meaning of their own such as sigmoid gates; None (the default): scaled per map."""
        return None

    def observe(self, model: nn.Module):
        """A context manager active during the shared forward pass; what its ``__enter__`` returns is
        ``ctx.observed[self.name]`` (e.g. hooks that record a module's outputs). Record copies
        (``output.detach().clone()``): the network may change a module's output in place afterwards
        (``ReLU(inplace=True)``, ``out += identity``). Default: nothing."""
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
    * ``input_gradients``: (N, K, 3, H, W), ``dS_t / dx`` (only when a method ``uses_input_gradient``:
      then ``inputs`` require grad and every captured layer stays in the graph from them);
      computed on first access by one ``torch.autograd.grad`` call.
    * ``observed``: ``{method name: what its observe() recorded during the forward pass}``.
    * ``cached(key, compute)``: a value computed once per batch, shared by the methods that ask for it.
    * ``layers``: ``{name: activation}`` of every captured layer (several with ``layer=["a", "b"]``);
      ``ctx.at(name)`` is the context at one of them. The gradients of all layers come from one call.
    """

    def __init__(self, model: nn.Module, inputs: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                 layer: str | None, activations: torch.Tensor | None, layers: dict | None = None):
        self.model = model
        self.inputs = inputs
        self.logits = logits
        self.targets = targets
        self.layer = layer
        self.activations = activations
        self.observed: dict = {}
        # every captured layer {name: activation}; views made by at() share it and the gradients
        self.layers: dict = dict(layers) if layers else ({layer: activations} if activations is not None else {})
        self._shared: dict = {}

    @property
    def gradients(self) -> torch.Tensor:
        if self.layer not in self._shared:
            names = list(self.layers) if self.layer in self.layers else [self.layer]
            tensors = [self.layers.get(name, self.activations) for name in names]
            grads = target_gradients(self.logits, self.targets, tensors, retain_graph=getattr(self.inputs, "requires_grad", False))
            self._shared.update(zip(names, grads))
        return self._shared[self.layer]

    @property
    def input_gradients(self) -> torch.Tensor:
        if not getattr(self.inputs, "requires_grad", False):
            raise RuntimeError("ctx.input_gradients needs a method with uses_input_gradient = True")
        return self.cached(("input gradients",), lambda: target_gradients(self.logits, self.targets, self.inputs,
                                                                          retain_graph=True))

    def cached(self, key, compute: Callable[[], object]):
        """``compute()``, called once per batch for ``key`` (a tuple: never a layer's name) and shared by
        all methods and layers of the pass."""
        if key not in self._shared:
            self._shared[key] = compute()
        return self._shared[key]

    def at(self, layer: str) -> "Context":
        """This context seen at another captured layer: same pass, same (shared) gradient call."""
        view = copy.copy(self)
        view.layer, view.activations = layer, self.layers[layer]
        return view

    def release(self) -> None:
        """Drop the autograd graph and cached tensors."""
        self.logits = self.activations = None
        self._shared.clear()
        self.layers.clear()
        self.observed = {}


def target_gradients(logits: torch.Tensor, targets: torch.Tensor, activation, retain_graph: bool = False):
    """``d logits[n, targets[n, k]] / d activation[n]`` for all n, k, as (N, K, *activation[0].shape).

    ``activation`` may be a list of tensors (several layers): then a list of gradients, from the same
    single call. Sums over the batch are exact because images do not interact in eval mode. K > 1
    uses one batched (vmapped) backward; if an operation has no batching rule, it falls back to K calls.
    ``retain_graph``: keep the graph for further calls (K > 1 always keeps it).
    """
    single = torch.is_tensor(activation)
    inputs = [activation] if single else list(activation)
    scores = logits.gather(1, targets)  # (N, K)
    n, k = scores.shape
    if k == 1:
        grads = [g.unsqueeze(1) for g in torch.autograd.grad(scores.sum(), inputs, retain_graph=retain_graph)]
        return grads[0] if single else grads
    selectors = torch.eye(k, dtype=scores.dtype, device=scores.device)[:, None, :].expand(k, n, k)
    try:
        grads = torch.autograd.grad(scores, inputs, grad_outputs=selectors, is_grads_batched=True,
                                    retain_graph=True)
    except RuntimeError:
        per_target = [torch.autograd.grad(scores[:, j].sum(), inputs, retain_graph=True) for j in range(k)]
        grads = [torch.stack(gs) for gs in zip(*per_target)]
    grads = [g.transpose(0, 1) for g in grads]
    return grads[0] if single else grads


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
