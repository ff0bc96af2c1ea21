"""Attention feature selection (AFS) gates on the Conv+BN pairs of a network, added with hooks.

For a convolution ``conv`` (input ``x``, C_out channels) followed by BatchNorm ``bn``, the gate is

    h     = ReLU(W GAP(x) + b)                              channel importance, (N, C_out)
    keep  = winner-take-all: the round(d * C_out) largest entries of h per image
    pi    = h * keep
    out_c = m_c * (s_c * pi_c + (1 - s_c) * gamma_c * keep_c) * bn(conv(x))_c

The predictor starts near ``h = 1`` (weights N(0, 0.01), bias 1; the reference code keeps torch's
default initialisation), so a gated network starts as the network it was built from with its
winner-take-all channels dropped, and transferred weights keep working from the first step.
``s`` (dynamic or static channel) and ``m`` (channel kept at all) are 0/1 buffers, both 1 at first;
``gamma`` is trainable (U(0, 1) at first) and matters once ``s_c = 0``. :func:`update_masks` sets
them from statistics over a data pass. The network's own code is untouched: the gate is a child
``afs`` of the BatchNorm module (so every original weight keeps its name) and runs through a
forward pre-hook on ``conv`` (it pools ``x``) and a forward hook on ``bn`` (it scales the output).
Because h is predicted from ``x`` before ``conv`` runs, channels the gate drops need not be
computed at all: :mod:`xviz_afs.sparse` runs a gated ResNet that way.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from xviz.errors import XvizError


def winner_take_all(h: torch.Tensor, ratio: float) -> torch.Tensor:
    """0/1 mask of the ``round(ratio * C)`` largest entries of each row of ``h`` (N, C) (at least one)."""
    k = max(1, round(ratio * h.shape[1]))
    if k >= h.shape[1]:
        return torch.ones_like(h)
    top = h.topk(k, dim=1).indices
    return torch.zeros_like(h).scatter_(1, top, 1.0)


def check_ratio(ratio) -> float:
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0 < ratio <= 1:
        raise XvizError(f"AFS keep ratio d = {ratio!r} must be in (0, 1]: the fraction of channels each gate keeps")
    return float(ratio)


class AFSGate(nn.Module):
    """The gate of one Conv+BN pair (see the module docstring for the formula)."""

    def __init__(self, in_channels: int, out_channels: int, ratio: float = 0.9):
        super().__init__()
        self.ratio = check_ratio(ratio)
        self.predictor = nn.Linear(in_channels, out_channels)
        nn.init.normal_(self.predictor.weight, 0.0, 0.01)  # h ~ 1 at first: the gated network starts close
        nn.init.ones_(self.predictor.bias)  # to the network it was built from (a transferred one keeps working)
        self.gamma = nn.Parameter(torch.rand(out_channels))
        self.register_buffer("s", torch.ones(out_channels))
        self.register_buffer("m", torch.ones(out_channels))
        self.enabled = True
        self.pooled: torch.Tensor | None = None  # GAP(x) of the current forward pass
        self.last: dict | None = None  # what the last forward computed, when recording
        self.record_outputs = True  # record the gated output too (not only h, keep, scale)

    def pool_input(self, conv: nn.Module, args: tuple) -> None:
        """Forward pre-hook of the gated ``conv``: remember GAP(x). (A bound method, so a deep copy
        of the model hooks its own gates.)"""
        self.pooled = args[0].mean(dim=(2, 3)) if self.enabled else None

    def importance(self, pooled: torch.Tensor) -> torch.Tensor:
        """h = ReLU(W GAP(x) + b), (N, C_out)."""
        return torch.relu(self.predictor(pooled))

    def scale(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(scale, h, keep): ``scale = m * (s * h * keep + (1 - s) * gamma * keep)``, each (N, C_out)."""
        h = self.importance(pooled)
        keep = winner_take_all(h.detach(), self.ratio)
        scale = self.m * (self.s * h * keep + (1 - self.s) * self.gamma * keep)
        return scale, h, keep

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Scale the BatchNorm output ``y`` (N, C_out, H, W) by the gate of the pooled input."""
        if not self.enabled or self.pooled is None:
            return y
        scale, h, keep = self.scale(self.pooled)
        self.pooled = None
        out = y * scale[:, :, None, None]
        if self.last is not None:  # copies made now: the block modifies ``out`` in place (ReLU, ``+= identity``)
            self.last = {"importance": h.detach().clone(), "keep": keep.clone(), "scale": scale.detach().clone()}
            if self.record_outputs:
                self.last["output"] = out.detach().clone()
        return out


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, nn.Conv2d, str, nn.BatchNorm2d]]:
    """The Conv+BN pairs AFS gates: in each torchvision ResNet block, ``convI`` followed by ``bnI``
    (the residual branch; the stem and the downsampling shortcuts are left ungated, as their
    output is needed whole)."""
    pairs = []
    for block_name, block in model.named_modules():
        if isinstance(block, (BasicBlock, Bottleneck)):
            for i in (1, 2, 3):
                conv, bn = getattr(block, f"conv{i}", None), getattr(block, f"bn{i}", None)
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    pairs.append((f"{block_name}.conv{i}", conv, f"{block_name}.bn{i}", bn))
    return pairs


def _apply_gate(module, args, output):
    return module.afs(output)


def add_gates(model: nn.Module, ratio: float = 0.9) -> nn.Module:
    """Add an AFS gate to every Conv+BN pair of a torchvision ResNet (in place); returns the model."""
    ratio = check_ratio(ratio)
    pairs = conv_bn_pairs(model)
    if not pairs:
        raise XvizError(f"`{type(model).__name__}` has no ResNet blocks with Conv+BN pairs: AFS gates apply to "
                        "torchvision ResNets (afs_resnet18 ... afs_resnet152)")
    for _, conv, _, bn in pairs:
        gate = AFSGate(conv.in_channels, conv.out_channels, ratio)
        bn.add_module("afs", gate)
        conv.register_forward_pre_hook(gate.pool_input)
        bn.register_forward_hook(_apply_gate)
    return model


def gates(model: nn.Module) -> dict[str, AFSGate]:
    """``{conv layer name: gate}`` of a gated model (empty for an ungated one)."""
    names = {bn: conv for conv, _, bn, _ in conv_bn_pairs(model)}
    return {names.get(name.removesuffix(".afs"), name): m for name, m in model.named_modules() if isinstance(m, AFSGate)}


def require_gates(model: nn.Module, what: str) -> dict[str, AFSGate]:
    found = gates(model)
    if not found:
        raise XvizError(f"the model has no AFS gates: `{what}` applies to models built with them (afs_resnet18 ... "
                        "afs_resnet152, `xviz train --model afs_resnet50`); for this model use gradcam or gradcampp")
    return found


def set_gates(model: nn.Module, enabled: bool) -> None:
    """Switch every AFS gate on (gated network) or off (the plain network, exactly)."""
    for gate in gates(model).values():
        gate.enabled = enabled


class recording:
    """Context manager: ``{layer: what its gate computed}`` (importance h, keep, scale, output) for
    the forward passes run inside it (the last one per layer; ``outputs=False``: without the output);
    filled when the context closes. Each record is a copy taken when the gate ran, so ``output`` is
    the gated BatchNorm output itself, never what the block later makes of it in place (its ReLU,
    the residual add)."""

    def __init__(self, model, outputs: bool = True):
        self.found = require_gates(model, "afs-channels")
        self.records: dict[str, dict] = {}
        self.outputs = outputs

    def __enter__(self):
        for gate in self.found.values():
            gate.last, gate.record_outputs = {}, self.outputs
        return self.records

    def __exit__(self, *exc):
        for name, gate in self.found.items():
            if gate.last:
                self.records[name] = gate.last
            gate.last = None


@torch.no_grad()
def channel_stats(model: nn.Module, batches, limit: int | None = None, progress: bool = False) -> dict[str, dict]:
    """Per gated layer, over the images of ``batches`` (tensors or (tensor, label) pairs), in eval mode:
    ``importance`` mean of h, ``variance`` of h, ``pi`` mean of h * keep (winner-take-all),
    ``kept`` how often each channel is computed (keep * m), ``m``, ``s``, and ``images``; (C,) arrays."""
    from tqdm import tqdm

    found = require_gates(model, "channel statistics")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    count = 0
    try:
        for batch in tqdm(batches, desc="gate statistics", unit="batch", leave=False, disable=not progress):
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if limit is not None:
                x = x[: max(0, limit - count)]
            if not len(x):
                break
            with recording(model, outputs=False) as records:
                model(x.to(device))
            count += x.shape[0]
            for name, r in records.items():
                h, keep, m = r["importance"].double(), r["keep"].double(), found[name].m.double()
                stats = torch.stack([h.sum(0), (h * h).sum(0), (h * keep).sum(0), (keep * m).sum(0)])
                sums[name] = stats if name not in sums else sums[name] + stats
    finally:
        model.train(was_training)
    if count == 0:
        raise XvizError("the gate statistics saw no images")
    out = {}
    for name, gate in found.items():
        h_sum, h2_sum, pi_sum, kept_sum = (sums[name] / count).cpu()
        out[name] = {"importance": h_sum, "variance": (h2_sum - h_sum ** 2).clamp_min(0), "pi": pi_sum,
                     "kept": kept_sum, "m": gate.m.double().cpu(), "s": gate.s.double().cpu(), "images": count}
    return out


@torch.no_grad()
def update_masks(model: nn.Module, batches, thres_s: float = 0.5, thres_m: float = 0.5,
                 limit: int | None = None, progress: bool = False) -> dict[str, dict]:
    """Set ``s`` and ``m`` of every gate from a pass over ``batches`` (see :func:`channel_stats`):

    * ``m_c = 1[mean over images of pi_c > thres_m]`` (pi = h * keep): a channel the gate rarely
      values is removed;
    * ``s_c = 1[variance over images of h_c > thres_s]``: a channel whose importance hardly varies
      becomes static; its ``gamma_c`` is set to its mean importance so its output stays the same on average.

    Statistics are taken with the gates as they are. Returns ``{layer: {"channels", "kept", "static"}}``.
    """
    stats = channel_stats(model, batches, limit, progress)
    report = {}
    for name, gate in gates(model).items():
        st = stats[name]
        m = (st["pi"] > thres_m).to(gate.m)
        s = (st["variance"] > thres_s).to(gate.s)
        newly_static = ((gate.s > 0) & (s == 0)).cpu()
        gate.gamma.data[newly_static.to(gate.gamma.device)] = st["importance"][newly_static].to(gate.gamma)
        gate.m.copy_(m)
        gate.s.copy_(s)
        report[name] = {"channels": int(m.numel()), "kept": int(m.sum()), "static": int((s == 0).sum())}
    return report
