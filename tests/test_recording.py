"""What a method records during the shared forward pass is a copy taken when the layer ran.

Every registered method runs, all of them in one shared pass, on models where an in-place operation
follows each recorded module (``x += 1``, ``relu_``, a residual ``out += identity``, a caller reusing
a buffer). Each model has a twin computing the same function without in-place operations, where
nothing can alias: the explanations must be the same. The attention map and the gated AFS output
are also checked against formulas applied by hand.
"""

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from xviz.errors import XvizError
from xviz.explainer import explain_tensors
from xviz.methods import Method
from xviz.registry import get_plugin_manager, methods
from xviz_afs.gates import add_gates, gates


class Tapped(nn.Module):
    """stem -> ReLU -> ``tap`` (recorded) -> ``+= 0.5`` and ``relu_`` in place (or their out-of-place twin)."""

    def __init__(self, inplace: bool):
        super().__init__()
        torch.manual_seed(0)
        self.inplace = inplace
        self.stem, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.tap = nn.Conv2d(8, 12, 3, padding=1)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        a = self.tap(self.act(self.stem(x)))
        if self.inplace:
            a += 0.5
            a.relu_()
        else:
            a = torch.relu(a + 0.5)
        return self.head(a.mean(dim=(2, 3)))


class BufferReuse(nn.Module):
    """``tap`` is an ``nn.Identity`` (recorded): its output *is* the caller's tensor ``f``, which the
    caller zeroes in place once done with it (the twin does not)."""

    def __init__(self, inplace: bool):
        super().__init__()
        torch.manual_seed(1)
        self.inplace = inplace
        self.stem, self.tap, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.Identity(), nn.ReLU()
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        f = self.stem(x)
        out = self.head(self.act(self.tap(f)).mean(dim=(2, 3)))
        if self.inplace:
            f.zero_()
        return out


class ScoreBlock(nn.Module):
    """An attention block of the protocol (see ``xviz_attention``): returns raw scores ``c`` and the
    attended feature; its scores are the map (``normalized(c)`` is ``c`` itself, a linear attention)."""

    def __init__(self, channels: int):
        super().__init__()
        self.u = nn.Conv2d(channels, 1, 1)

    def normalized(self, c):
        return c

    def forward(self, l):
        c = self.u(l)
        return c, l.mean(dim=(2, 3)) * (1 + c.mean(dim=(2, 3)))


class AttentionToy(nn.Module):
    """stem -> ReLU -> ``attn`` (recorded); the caller then rescales the scores in place."""

    attention_layers = ["attn"]

    def __init__(self, inplace: bool):
        super().__init__()
        torch.manual_seed(2)
        self.inplace = inplace
        self.stem, self.attn, self.head = nn.Conv2d(3, 8, 3, padding=1), ScoreBlock(8), nn.Linear(9, 5)

    def forward(self, x):
        c, g = self.attn(torch.relu(self.stem(x)))
        if self.inplace:
            c.mul_(2)
        else:
            c = c * 2
        return self.head(torch.cat([g, c.mean(dim=(2, 3))], dim=1))


class OutOfPlaceBlock(BasicBlock):
    """torchvision's BasicBlock without its in-place ``out += identity`` (its ReLU made out-of-place)."""

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def gated_resnet(inplace: bool):
    """A gated one-block-per-stage ResNet with BatchNorm statistics and varied gates; the last gate of
    ``layer4`` masked. torchvision's blocks modify each gated output in place (ReLU, residual add)."""
    torch.manual_seed(3)
    model = add_gates(ResNet(BasicBlock, [1, 1, 1, 1], num_classes=5), 0.5)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    with torch.no_grad():
        for gate in gates(model).values():
            gate.predictor.weight.normal_(0.0, 0.5)
            gate.s[::3] = 0.0
        gates(model)["layer4.0.conv2"].m.zero_()
    if not inplace:
        for m in model.modules():
            if isinstance(m, nn.ReLU):
                m.inplace = False
            if type(m) is BasicBlock:
                m.__class__ = OutOfPlaceBlock
    return model


# name: (build(inplace), the layer recorded for layer methods, input size, only the methods that record
# during the shared pass (the input attributions run passes of their own: the first model covers them))
MODELS = {
    "conv then in-place ops": (Tapped, "tap", 16, False),
    "identity whose input is reused": (BufferReuse, "tap", 16, True),
    "attention protocol": (AttentionToy, "stem", 16, True),
    "gated resnet": (gated_resnet, "layer2.0.bn2", 32, True),  # bn2's gated output, then ``out += identity``
}


def records_in_shared_pass(method) -> bool:
    return method.uses_layer or type(method).observe is not Method.observe


def applicable(model, pm, recording_only=False) -> list[str]:
    names = []
    for name, method in methods(pm).items():
        try:
            method.check(model, pm)
        except XvizError:
            continue
        if records_in_shared_pass(method) or not recording_only:
            names.append(name)
    return names


def explained(model, x, names, layer, pm) -> dict:
    out = explain_tensors(model.eval(), x, names, layer=layer, topk=2, pm=pm)
    return {(e.method, e.layer): e.raw for e in out}


def test_every_registered_method_is_run_on_a_model_it_applies_to():
    pm = get_plugin_manager(entrypoints=False)
    covered = set()
    for build, _, _, _ in MODELS.values():
        covered.update(applicable(build(True), pm))
    assert covered == set(methods(pm))


@pytest.mark.parametrize("case", list(MODELS))
def test_recorded_tensors_are_copies_in_place_ops_downstream_cannot_change(case):
    pm = get_plugin_manager(entrypoints=False)
    build, layer, size, recording_only = MODELS[case]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(5))
    inplace, twin = build(True), build(False)
    twin.load_state_dict(inplace.state_dict())
    names = applicable(inplace, pm, recording_only)
    got = explained(inplace, x, names, layer, pm)  # every applicable method in one shared pass
    want = explained(twin, x, names, layer, pm)
    assert got.keys() == want.keys() and {m for m, _ in got} == set(names)
    for key, raw in want.items():
        assert np.allclose(got[key], raw, rtol=1e-4, atol=1e-5 * np.abs(raw).max()), key  # float rounding only


def test_attention_map_is_the_score_map_computed_by_hand():
    model = AttentionToy(True).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    (e,) = explain_tensors(model, x, ["attention"], topk=2, pm=get_plugin_manager(entrypoints=False))
    with torch.no_grad():
        want = model.attn.u(torch.relu(model.stem(x)))[:, 0].numpy()  # before the caller's c.mul_(2)
    assert np.allclose(e.raw[:, 0], want, atol=1e-6) and np.allclose(e.raw[:, 1], want, atol=1e-6)

