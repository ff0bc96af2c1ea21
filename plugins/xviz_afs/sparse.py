"""What the gates save: multiply-accumulates (MACs) estimated from channel statistics, and a forward
pass of a gated ResNet that really skips the channels its gates drop (one image at a time, since
each image keeps its own channels).

A gated convolution computes only its kept output channels (winner-take-all and ``m``), and reads
only the input channels the previous gated convolution of its block kept; a convolution after a
layer whose channels are all masked computes nothing. The stem, the shortcuts and the classifier
always run in full.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from xviz.errors import XvizError

from xviz_afs.gates import AFSGate, gates, winner_take_all
from xviz_afs.pruning import PrunedGate, is_pruned


def _conv_macs(conv: nn.Conv2d, out_hw: tuple[int, int], cin: float, cout: float) -> float:
    kh, kw = conv.kernel_size
    return kh * kw * cin * cout / conv.groups * out_hw[0] * out_hw[1]


@dataclass
class MacsReport:
    dense: float  # MACs of the network without gates
    gated: float  # expected MACs when dropped channels are not computed (gate predictors included)
    per_layer: dict  # gated conv name -> (dense MACs, gated MACs, kept fraction)
    skipped: list  # gated convs whose channels are all masked (m = 0)

    @property
    def reduction(self) -> float:
        return self.dense / max(self.gated, 1e-12)


def output_sizes(model: nn.Module, image_size: int) -> dict[str, tuple[int, int]]:
    """Spatial size of every convolution's output for one ``image_size`` x ``image_size`` input."""
    sizes, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(lambda mod, a, out, n=name: sizes.__setitem__(n, tuple(out.shape[-2:]))))
    device = next(model.parameters()).device
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return sizes


def estimate_macs(model: nn.Module, image_size: int, kept: dict[str, float] | None = None) -> MacsReport:
    """Dense and gated MACs for one image; ``kept`` = ``{gated conv: mean fraction of its output
    channels computed}`` (from :func:`xviz_afs.report.channel_stats`; default: each gate's ratio
    times its ``m`` mask). A pruned model (:mod:`xviz_afs.pruning`) computes every channel left in it."""
    found = gates(model)
    sizes = output_sizes(model, image_size)
    fractions = {}
    for name, gate in found.items():
        if isinstance(gate, PrunedGate):
            fractions[name] = 1.0
            continue
        fractions[name] = kept[name] if kept and name in kept else \
            min(gate.ratio, float(gate.m.mean())) if gate.m.sum() > 0 else 0.0
    dense = gated = 0.0
    per_layer, skipped = {}, []
    previous = {}  # block -> kept fraction of the previous gated conv's output
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            full = _conv_macs(m, sizes[name], m.in_channels, m.out_channels)
            dense += full
            if name in found:
                block, conv = name.rsplit(".", 1)
                fin = previous.get(block, 1.0) if conv != "conv1" else 1.0
                fout = fractions[name]
                cost = full * fin * fout + found[name].predictor.weight.numel()  # + the gate's predictor
                previous[block] = fout
                per_layer[name] = (full, cost, fout)
                if fout == 0:
                    skipped.append(name)
                gated += cost
            else:
                gated += full
        elif isinstance(m, nn.Linear) and not name.endswith(".afs.predictor"):  # predictors: counted above
            dense += m.in_features * m.out_features
            gated += m.in_features * m.out_features
    return MacsReport(dense, gated, per_layer, skipped)


def _bn(y: torch.Tensor, bn: nn.BatchNorm2d, idx) -> torch.Tensor:
    scale = bn.weight[idx] / torch.sqrt(bn.running_var[idx] + bn.eps)
    shift = bn.bias[idx] - bn.running_mean[idx] * scale
    return y * scale[None, :, None, None] + shift[None, :, None, None]


def _block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    identity = block.downsample(x) if block.downsample is not None else x
    convs = [(block.conv1, block.bn1), (block.conv2, block.bn2)]
    if isinstance(block, Bottleneck):
        convs.append((block.conv3, block.bn3))
    h, in_idx = x, None  # None: all input channels
    for i, (conv, bn) in enumerate(convs):
        gate: AFSGate = bn.afs
        pooled = h.mean(dim=(2, 3))
        weight = gate.predictor.weight if in_idx is None else gate.predictor.weight[:, in_idx]
        importance = torch.relu(F.linear(pooled, weight, gate.predictor.bias))[0]
        keep = winner_take_all(importance[None], gate.ratio)[0] * (gate.m > 0)
        idx = keep.nonzero().squeeze(1)
        if idx.numel() == 0:  # nothing kept: a zero output, and the next convolution sees zeros
            size = [(n + 2 * p - d * (k - 1) - 1) // st + 1 for n, p, d, k, st in
                    zip(h.shape[-2:], conv.padding, conv.dilation, conv.kernel_size, conv.stride)]
            if i == len(convs) - 1:
                return torch.relu(identity)
            h, in_idx = h.new_zeros(1, conv.out_channels, *size), None
            continue
        w = conv.weight[idx] if in_idx is None else conv.weight[idx][:, in_idx]
        y = F.conv2d(h, w, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        factor = gate.m[idx] * (gate.s[idx] * importance[idx] + (1 - gate.s[idx]) * gate.gamma[idx])
        y = _bn(y, bn, idx) * factor[None, :, None, None]
        if i < len(convs) - 1:
            h, in_idx = torch.relu(y), idx
        else:
            out = identity.clone()
            out[:, idx] += y
            return torch.relu(out)
    raise AssertionError("unreachable")


@torch.no_grad()
def sparse_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of a gated torchvision ResNet in eval mode, computing only the channels its gates
    keep; one image at a time. Equal to ``model(x)`` up to float rounding."""
    if not gates(model):
        raise XvizError("the model has no AFS gates: nothing to skip")
    if is_pruned(model):
        raise XvizError("the model is pruned: its masked channels are gone already, run it as it is")
    if model.training:
        raise XvizError("sparse_forward runs the model in eval mode (BatchNorm statistics): call model.eval()")
    outs = []
    for image in x.split(1):
        h = model.maxpool(model.relu(model.bn1(model.conv1(image))))
        for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
            for block in stage:
                h = _block(block, h)
        outs.append(model.fc(torch.flatten(model.avgpool(h), 1)))
    return torch.cat(outs)
