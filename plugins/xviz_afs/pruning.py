"""A gated ResNet pruned for real: the channels whose mask ``m_c`` is 0 removed from the weights.

A channel with ``m_c = 0`` outputs exactly 0 for every image (its gate's scale is
``m_c (...) = 0``), so after ``afs-update`` it can leave the network: :func:`prune` cuts, in each
gated Conv+BN pair, the convolution's output channels and the BatchNorm's entries of the masked
channels, and the next convolution of the block (which reads them after the ReLU, always as 0) loses
the matching input channels; the gate's predictor loses the matching inputs too. What remains is a
smaller dense network: every image of a batch runs through the same, smaller convolutions, with no
gather per call. The gate still predicts ``h`` for all of the layer's channels, picks the
winner-take-all channels among all of them (so the pruned network makes the gated network's choice),
and scales the channels kept: ``out_c = m_c (s_c h_c keep_c + (1 - s_c) gamma_c keep_c) bn(conv x)_c``
for the kept ``c`` only; a kept channel that winner-take-all drops for one image is computed and
multiplied by 0 for that image (the batch runs as one). The last convolution of a block adds its
kept channels to the shortcut at their places (the block's forward: :class:`PrunedBasicBlock`,
:class:`PrunedBottleneck`); in eval mode each pruned BatchNorm applies its gate's scale in the same
pass (:class:`PrunedBatchNorm2d`).

Every layer keeps at least one channel (the first, where all are masked; it stays multiplied by 0),
so no convolution is empty. The result equals the gated network's output up to float rounding.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from xviz.errors import XvizError

from xviz_afs.gates import AFSGate, require_gates


class PrunedGate(AFSGate):
    """An :class:`AFSGate` whose convolution computes only the channels ``index`` of its ``channels``
    (all the layer's)."""

    index: torch.Tensor
    channels: int
    scaled: tuple | None = None  # (scale, h, keep) when the BatchNorm applied the scale itself (eval mode)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Scale the kept channels ``y`` (N, len(index), H, W) by their gate (unless the BatchNorm did); a
        recording gets the output at the layer's full width, zeros at the pruned channels."""
        if self.scaled is not None:
            (scale, h, keep), self.scaled = self.scaled, None
            out = y
        elif self.enabled and self.pooled is not None:
            scale, h, keep = self.scale(self.pooled)
            self.pooled = None
            out = y * scale[:, self.index, None, None]
        else:
            h = keep = scale = None
            out = y
        if self.last is not None and scale is not None:
            full = out.new_zeros(out.shape[0], self.channels, *out.shape[2:]).index_copy_(1, self.index, out)
            self.last = {"importance": h.detach().clone(), "keep": keep.clone(), "scale": scale.detach().clone()}
            if self.record_outputs:
                self.last["output"] = full.detach().clone()
        return out


class PrunedBatchNorm2d(nn.BatchNorm2d):
    """The BatchNorm of a pruned pair: in eval mode it applies its gate's scale in the same pass,
    ``bn(y)_c scale_c = y_c (w_c / sqrt(var_c + eps)) scale_c + (b_c - mean_c w_c / sqrt(var_c + eps)) scale_c``
    (one multiply-add instead of the normalisation and the gate's multiply); in training mode it is BatchNorm."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        gate = self.afs
        if self.training or self.running_var is None or not gate.enabled or gate.pooled is None:
            return super().forward(y)
        scale, h, keep = gate.scale(gate.pooled)
        gate.pooled, gate.scaled = None, (scale, h, keep)
        kept = scale[:, gate.index]
        inverse = torch.rsqrt(self.running_var + self.eps)
        weight = inverse if self.weight is None else self.weight * inverse
        bias = -self.running_mean * weight + (0 if self.bias is None else self.bias)
        return torch.addcmul((bias * kept)[:, :, None, None], y, (weight * kept)[:, :, None, None])


def _add_kept(identity: torch.Tensor, y: torch.Tensor, index: torch.Tensor, fresh: bool) -> torch.Tensor:
    """``identity`` plus the kept channels ``y`` at ``index`` (the pruned channels add 0), then ReLU; in
    place on a ``fresh`` identity (the shortcut's own output) when no gradient is recorded."""
    if fresh and not torch.is_grad_enabled():
        return torch.relu_(identity.index_add_(1, index, y))
    return torch.relu(identity.index_add(1, index, y))


class PrunedBasicBlock(BasicBlock):
    """A pruned BasicBlock: its last convolution's kept channels are added to the shortcut where they belong."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return _add_kept(identity, self.bn2(self.conv2(out)), self.bn2.afs.index, self.downsample is not None)


class PrunedBottleneck(Bottleneck):
    """A pruned Bottleneck: its last convolution's kept channels are added to the shortcut where they belong."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return _add_kept(identity, self.bn3(self.conv3(out)), self.bn3.afs.index, self.downsample is not None)


def static_channels(model: nn.Module) -> dict[str, list[int]]:
    """``{gated conv: the channels its masks keep}`` (``m_c = 1``; the first channel where none is kept)."""
    return {name: (gate.m > 0).nonzero().flatten().tolist() or [0] for name, gate in require_gates(model, "prune").items()}


def is_pruned(model: nn.Module) -> bool:
    return any(isinstance(m, PrunedGate) for m in model.modules())


def _cut_conv(conv: nn.Conv2d, out_idx: torch.Tensor, in_idx: torch.Tensor | None) -> None:
    weight = conv.weight.data[out_idx]
    if in_idx is not None:
        weight = weight[:, in_idx]
    conv.weight = nn.Parameter(weight.contiguous(), requires_grad=conv.weight.requires_grad)
    if conv.bias is not None:
        conv.bias = nn.Parameter(conv.bias.data[out_idx].clone(), requires_grad=conv.bias.requires_grad)
    conv.out_channels, conv.in_channels = weight.shape[0], weight.shape[1] * conv.groups


def _cut_bn(bn: nn.BatchNorm2d, idx: torch.Tensor) -> None:
    for name in ("weight", "bias"):
        p = getattr(bn, name)
        if p is not None:
            setattr(bn, name, nn.Parameter(p.data[idx].clone(), requires_grad=p.requires_grad))
    for name in ("running_mean", "running_var"):
        if getattr(bn, name) is not None:
            setattr(bn, name, getattr(bn, name)[idx].clone())
    bn.num_features = len(idx)
    bn.__class__ = PrunedBatchNorm2d


def _cut_gate(gate: AFSGate, idx: torch.Tensor, in_idx: torch.Tensor | None) -> None:
    if in_idx is not None:
        p = gate.predictor
        p.weight = nn.Parameter(p.weight.data[:, in_idx].clone(), requires_grad=p.weight.requires_grad)
        p.in_features = len(in_idx)
    gate.__class__ = PrunedGate
    gate.channels = int(gate.m.numel())
    gate.register_buffer("index", idx.clone())


def prune(model: nn.Module, channels: dict[str, list[int]] | None = None) -> nn.Module:
    """Cut ``model`` (a gated torchvision ResNet, in place) down to ``channels`` (``{gated conv: kept
    channel indices}``; default: :func:`static_channels`, the channels with ``m = 1``); returns it."""
    found = require_gates(model, "prune")
    if is_pruned(model):
        raise XvizError("the model is pruned already")
    channels = static_channels(model) if channels is None else channels
    missing = sorted(set(found) - set(channels))
    if missing:
        raise XvizError(f"no kept channels given for the gated layers {', '.join(missing)}")
    device = next(model.parameters()).device
    kept = {}
    for name, conv in ((n, m) for n, m in model.named_modules() if n in found):  # all checked before any cut
        kept[name] = torch.as_tensor(sorted(set(channels[name])), dtype=torch.long, device=device)
        if not len(kept[name]) or int(kept[name].min()) < 0 or int(kept[name].max()) >= conv.out_channels:
            raise XvizError(f"the kept channels of `{name}` must be 1 to {conv.out_channels} channel indices "
                            f"in 0-{conv.out_channels - 1}")
    for block_name, block in model.named_modules():
        if not isinstance(block, (BasicBlock, Bottleneck)):
            continue
        in_idx = None
        for i in (i for i in (1, 2, 3) if hasattr(block, f"conv{i}")):
            idx, bn = kept[f"{block_name}.conv{i}"], getattr(block, f"bn{i}")
            _cut_conv(getattr(block, f"conv{i}"), idx, in_idx)
            _cut_bn(bn, idx)
            _cut_gate(bn.afs, idx, in_idx)
            in_idx = idx
        block.__class__ = PrunedBasicBlock if isinstance(block, BasicBlock) else PrunedBottleneck
    return model


def pruned_channels(model: nn.Module) -> dict[str, list[int]]:
    """``{gated conv: kept channel indices}`` of a pruned model (what rebuilds it: the model option ``channels``)."""
    return {name: gate.index.tolist() for name, gate in require_gates(model, "prune").items()
            if isinstance(gate, PrunedGate)}
