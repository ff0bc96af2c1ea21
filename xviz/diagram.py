"""A model's architecture diagram, traced from the module itself so it cannot drift from the code.

One forward pass of a dummy input is watched: every child module down to ``depth`` levels is a box
(its name, class and output shape), and so is every tensor function the model calls between them
(``max_pool2d``, ``cat``, ``add``, ...; shape-only functions such as ``flatten`` pass through). An
arrow goes from the box that produced a tensor to each box that reads it.

    graph = trace(model, torch.zeros(1, 3, 32, 32))
    draw(graph, "architecture.png", highlight=model.attention_layers)

Boxes are laid out in rows by their longest distance from the input; an arrow that skips rows runs
down a channel at the right of the boxes, so it never crosses one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from xviz.errors import XvizError

PASS_THROUGH = {"flatten", "view", "reshape", "contiguous", "float", "to", "squeeze", "unsqueeze", "clone",
                "detach", "__getitem__", "permute", "type_as", "size", "dim"}


@dataclass
class Node:
    """A box: ``name`` (module path or function), ``kind`` (module class or ``function``), ``shape``
    (output shape without the batch), ``inputs`` (indices of the nodes it reads)."""

    name: str
    kind: str
    shape: tuple = ()
    inputs: list[int] = field(default_factory=list)


class _Tracer(TorchFunctionMode):
    """Records tensor functions called outside the watched modules as nodes."""

    def __init__(self, graph: "_Graph"):
        super().__init__()
        self.graph = graph

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.graph.inside == 0:
            self.graph.function(getattr(func, "__name__", str(func)), (args, kwargs), out)
        return out


class _Graph:
    def __init__(self):
        self.nodes: list[Node] = []
        self.producer: dict[int, int] = {}  # id(tensor) -> node index
        self.alive: list[torch.Tensor] = []  # keeps ids unique while tracing
        self.inside = 0

    def sources(self, value) -> list[int]:
        found: list[int] = []
        for t in _tensors(value):
            index = self.producer.get(id(t))
            if index is not None and index not in found:
                found.append(index)
        return found

    def produce(self, index: int, value) -> None:
        for t in _tensors(value):
            self.producer[id(t)] = index
            self.alive.append(t)

    def add(self, name: str, kind: str, inputs, output) -> None:
        tensors = _tensors(output)
        shape = tuple(tensors[-1].shape[1:]) if tensors else ()
        self.nodes.append(Node(name, kind, shape, self.sources(inputs)))
        self.produce(len(self.nodes) - 1, output)

    def function(self, name: str, inputs, output) -> None:
        sources = self.sources(inputs)
        if not sources or not _tensors(output):
            return
        if name in PASS_THROUGH and len(sources) == 1:
            self.produce(sources[0], output)
            return
        self.add(name, "function", inputs, output)


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def watched_modules(model: nn.Module, depth: int) -> list[tuple[str, nn.Module]]:
    """The modules that become boxes: the children down to ``depth`` levels (a leaf stops earlier)."""
    found = []

    def walk(module, prefix, level):
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if level == depth or not list(child.children()):
                found.append((path, child))
            else:
                walk(child, path + ".", level + 1)

    walk(model, "", 1)
    return found


@torch.no_grad()
def trace(model: nn.Module, example: torch.Tensor, depth: int = 1) -> list[Node]:
    """The dataflow of ``model(example)`` between its modules at ``depth`` (see the module doc)."""
    if depth < 1:
        raise XvizError(f"`--depth {depth}` must be at least 1")
    graph = _Graph()
    graph.add("input", "input", (), example)
    handles = []
    for path, module in watched_modules(model, depth):
        def enter(mod, args, path=path):
            graph.inside += 1

        def leave(mod, args, output, path=path):
            graph.inside -= 1
            if graph.inside == 0:
                graph.add(path, type(mod).__name__, args, output)

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    was_training = model.training
    model.eval()
    try:
        with _Tracer(graph):
            model(example)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return graph.nodes


def layout(nodes: list[Node]) -> list[tuple[int, int]]:
    """``(row, column)`` of each node: row = longest path from the input; columns in order of arrival."""
    rows = []
    for node in nodes:
        rows.append(1 + max((rows[i] for i in node.inputs), default=-1))
    used: dict[int, int] = {}
    places = []
    for row in rows:
        places.append((row, used.get(row, 0)))
        used[row] = used.get(row, 0) + 1
    return places


def _label(node: Node) -> str:
    shape = "×".join(str(s) for s in node.shape) or "-"
    if node.kind in ("input", "function"):
        return f"{node.name}\n{shape}"
    return f"{node.name} · {node.kind}\n{shape}"


def draw(nodes: list[Node], title: str = "", highlight=(), box_width: float = 2.7):
    """The diagram as a matplotlib figure: a box per node (``highlight``: names drawn in orange), an
    arrow per input; arrows that skip rows run down channels at the right."""
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyBboxPatch

    places = layout(nodes)
    counts: dict[int, int] = {}
    for row, _ in places:
        counts[row] = counts.get(row, 0) + 1
    step = box_width + 0.4
    xy = [((col - (counts[row] - 1) / 2) * step, -row * 1.0) for row, col in places]
    right = max(x for x, _ in xy) + box_width / 2
    long_edges = [(i, j) for j, node in enumerate(nodes) for i in node.inputs if places[j][0] - places[i][0] > 1]
    nrows = max(r for r, _ in places) + 1
    width = right * 2 + 0.5 + 0.3 * len(long_edges)
    fig = Figure(figsize=(0.8 * width, 0.72 * nrows + 0.6))
    ax = fig.add_axes((0, 0, 1, 0.97 if title else 1))
    half_h = 0.3
    for node, (x, y) in zip(nodes, xy):
        color = "#fdd49e" if node.name in highlight else {"input": "#e0e0e0", "function": "#f4f4f4"}.get(node.kind, "#c6dbef")
        ax.add_patch(FancyBboxPatch((x - box_width / 2, y - half_h), box_width, 2 * half_h,
                                    boxstyle="round,pad=0.02,rounding_size=0.08", facecolor=color,
                                    edgecolor="0.35", linewidth=0.9, zorder=2))
        ax.text(x, y, _label(node), ha="center", va="center", fontsize=8.5, zorder=3,
                fontstyle="italic" if node.kind == "function" else "normal")
    arrow = dict(arrowstyle="-|>", color="0.3", linewidth=0.9, shrinkA=0, shrinkB=0, mutation_scale=9)
    channel = {edge: right + 0.3 + 0.3 * k for k, edge in enumerate(long_edges)}
    for j, node in enumerate(nodes):
        tx, ty = xy[j]
        for i in node.inputs:
            sx, sy = xy[i]
            if (i, j) in channel:  # right, down its own channel, left at its own height, into the box
                cx, k = channel[(i, j)], long_edges.index((i, j))
                level = ty + half_h + 0.12 + 0.45 * (k + 1) / (len(long_edges) + 1)
                entry = tx + 0.3 * box_width / 2
                ax.plot([sx + box_width / 2, cx, cx, entry], [sy, sy, level, level], color="0.45", linewidth=0.9,
                        zorder=1)
                ax.annotate("", (entry, ty + half_h), (entry, level), arrowprops={**arrow, "color": "0.45"}, zorder=1)
            else:
                ax.annotate("", (tx, ty + half_h), (sx, sy - half_h), arrowprops=arrow, zorder=1)
    ax.set_xlim(-right - 0.25, right + 0.45 + 0.3 * len(long_edges))
    ax.set_ylim(-(nrows - 1) - 0.5, 0.5)
    ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
