"""Capture a layer's activation for gradients, and leave the model exactly as it was found.

``capture_layer`` replaces the layer's output by a *detached leaf that requires grad* and hands a
copy downstream. Hence: gradients can be taken to the activation alone (never to parameters,
never through earlier layers), it works under ``torch.no_grad()`` and on frozen models, and what
is captured is a copy taken when the layer ran: neither an in-place op after the layer
(``ReLU(inplace=True)``, ``x += 1``) nor one on a tensor the output shares memory with (the input
of an in-place layer, which the caller may still hold) can change it.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn

from xviz.console import did_you_mean
from xviz.errors import XvizError


@contextlib.contextmanager
def preserved_state(model: nn.Module):
    """Put ``model`` in eval mode with frozen parameters; restore every module's ``training`` flag
    and every parameter's ``requires_grad`` on exit, whatever happens inside."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, requires in grads:
            p.requires_grad_(requires)


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (as in ``named_modules()``), or an error naming close ones."""
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    hint = did_you_mean(name, [n for n in modules if n], n=4, cutoff=0.4)
    raise XvizError(f"the model has no layer `{name}`: {hint}`xviz layers --model NAME` lists them")


@dataclass
class Captured:
    activation: torch.Tensor | None = None
    calls: int = 0


def token_grid_side(tensor: torch.Tensor) -> int | None:
    """``s`` when ``tensor`` is (N, 1 + s*s, C) tokens (a class token then an s x s patch grid,
    batch first, as torchvision's ViT blocks), else None."""
    if tensor.dim() != 3 or tensor.shape[1] < 5:
        return None
    side = math.isqrt(tensor.shape[1] - 1)
    return side if side * side == tensor.shape[1] - 1 else None


def _capture(tensor: torch.Tensor, keep_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(what is captured, what goes downstream). The captured tensor is a copy of the output: a detached
    leaf that requires grad, or (``keep_graph`` and the output already requires grad: a layer downstream
    of another captured one) a copy still in the graph, so gradients still reach the layers upstream.
    Tokens (N, 1 + h*w, C) are captured as an (N, C, h, w) grid (class token dropped), and downstream
    gets tokens rebuilt from that grid, so gradients to the grid are exact. A half-precision output
    (autocast) is captured in fp32, and handed on in its own dtype."""
    attached = keep_graph and tensor.requires_grad
    half = tensor.dtype in (torch.bfloat16, torch.float16)
    side = token_grid_side(tensor)
    if side is None:
        source = tensor if attached else tensor.detach()
        captured = source.float() if half else source.clone()
        if not attached:
            captured.requires_grad_(True)
        return captured, captured.to(tensor.dtype) if half else captured.clone()
    n, _, c = tensor.shape
    grid = tensor[:, 1:].reshape(n, side, side, c).permute(0, 3, 1, 2)
    cls = tensor[:, :1]
    if not attached:
        grid, cls = grid.detach(), cls.detach()
    grid = grid.to(torch.float32 if half else grid.dtype, memory_format=torch.contiguous_format, copy=True)
    if not attached:
        grid.requires_grad_(True)
    passed_on = torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(n, side * side, c).to(tensor.dtype)], dim=1)
    return grid, passed_on


@contextlib.contextmanager
def capture_layer(layer: nn.Module, keep_graph: bool = False):
    """Record ``layer``'s output (first tensor of a tuple) as a grad-requiring leaf; removes the
    hook on exit. If the layer runs several times in one forward, the last call is kept. Token outputs
    (N, 1 + h*w, C) are recorded as (N, C, h, w) (see :func:`_capture`)."""
    captured = Captured()

    def hook(module, args, output):
        tensor = output[0] if isinstance(output, (tuple, list)) else output
        if not torch.is_tensor(tensor):
            raise XvizError(f"layer `{type(module).__name__}` returns {type(tensor).__name__}, not a tensor")
        captured.activation, passed_on = _capture(tensor, keep_graph)
        captured.calls += 1
        if isinstance(output, tuple):
            return (passed_on, *output[1:])
        if isinstance(output, list):
            return [passed_on, *output[1:]]
        return passed_on

    handle = layer.register_forward_hook(torch.compiler.disable(hook))  # torch.compile: runs eagerly
    try:
        yield captured
    finally:
        handle.remove()


@contextlib.contextmanager
def capture_layers(layers: list[nn.Module], keep_graph: bool | None = None):
    """:func:`capture_layer` for several layers in one forward pass; a list of ``Captured``. One layer
    is captured exactly as by ``capture_layer``; with several (or ``keep_graph``), a layer downstream of
    another (or of inputs that require grad) keeps its graph, so the gradients to every captured layer
    and to the inputs are exact."""
    keep_graph = len(layers) > 1 if keep_graph is None else keep_graph
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(capture_layer(layer, keep_graph=keep_graph)) for layer in layers]


def first_output(output) -> torch.Tensor:
    """Class scores from a model's output: the tensor itself, a tuple's first element, a dict's
    ``logits`` (or ``out``), or an object's ``.logits``."""
    if torch.is_tensor(output):
        return output
    if isinstance(output, dict):
        for key in ("logits", "out"):
            if key in output:
                return output[key]
        raise XvizError(f"the model returns a dict with keys {sorted(output)}: xviz needs `logits` or `out`")
    if isinstance(output, (tuple, list)) and output:
        return first_output(output[0])
    if hasattr(output, "logits"):
        return output.logits
    raise XvizError(f"the model returns {type(output).__name__}: xviz needs class scores as a tensor")


def spatial_layers(model: nn.Module, example: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """Modules whose output is (N, C, h, w) with h * w > 1, in the order they (last) finish, with shapes.

    Runs one forward pass of ``example`` under ``no_grad`` with temporary hooks."""
    names = {m: n for n, m in model.named_modules() if n}
    order: list[tuple[str, tuple[int, ...]]] = []

    def hook(module, args, output):
        t = output[0] if isinstance(output, (tuple, list)) and output else output
        if torch.is_tensor(t) and t.dim() == 4 and t.shape[2] * t.shape[3] > 1:
            order.append((names[module], tuple(t.shape[1:])))

    handles = [m.register_forward_hook(hook) for m in names]
    device = next(model.parameters(), example).device
    try:
        with preserved_state(model), torch.no_grad():
            model(example.to(device))
    finally:
        for h in handles:
            h.remove()
    last = {name: i for i, (name, _) in enumerate(order)}  # a module run twice is listed once, at its last call
    return [item for i, item in enumerate(order) if last[item[0]] == i]
