"""Every registered method (built-in or installed) x a set of architectures: the method either refuses
the model with one line (from ``check()``, or from the pass itself where only the forward can tell, as
CAM's test that the head is global average pooling + one linear layer), or returns finite (N, K, h, w)
maps; either way it leaves the model as found."""

import pytest
import torch
import torchvision
from torch import nn

from xviz import registry
from xviz.errors import XvizError
from xviz.explainer import explain_tensors

from conftest import TinyCNN

PM = registry.get_plugin_manager()  # with entry points: an installed third-party method is covered too
METHODS = sorted(registry.method_declarations(PM))


class NHWCNet(nn.Module):
    """Conv stem, a channels-last stage (LayerNorm over C of (N, H, W, C)), then a ``Permute`` module back to
    (N, C, H, W) before pooling: torchvision's Swin layout."""

    def __init__(self, classes=5):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.norm = nn.LayerNorm(16)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.to_nchw = torchvision.ops.Permute([0, 3, 1, 2])
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        x = self.stem(x).permute(0, 2, 3, 1)  # NHWC
        x = x + self.mlp(self.norm(x))
        return self.head(self.to_nchw(x).mean((2, 3)))


class DictNet(nn.Module):
    """A model returning ``{"logits": ..., "features": ...}``, as many research codebases do."""

    def __init__(self, classes=5):
        super().__init__()
        self.net = TinyCNN(classes)

    def forward(self, x):
        features = self.net.body(x)
        return {"logits": self.net.head(features), "features": features}


def _vit():
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                hidden_dim=32, mlp_dim=64, num_classes=5)


ARCHITECTURES = {  # name -> (builder, input side)
    "tiny-cnn": (lambda: TinyCNN(), 16),
    "nhwc": (lambda: NHWCNet(), 32),
    "small-vit": (_vit, 32),
    "dict-output": (lambda: DictNet(), 16),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=5), 64),
    "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(num_classes=5), 64),
    "densenet121": (lambda: torchvision.models.densenet121(num_classes=5), 64),
}
HEAVY = {"resnet18", "mobilenet_v3_small", "densenet121"}
MANY_PASSES = {"integrated-gradients", "integrated-gradients-smooth", "occlusion", "smoothgrad"}  # fast on tiny-cnn


def _state(model: nn.Module):
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()],
            [p.requires_grad for p in model.parameters()], [p.grad is None for p in model.parameters()], hooks)


def _cases():
    for arch in ARCHITECTURES:
        for method in METHODS:
            slow = arch in HEAVY or (method in MANY_PASSES and arch != "tiny-cnn")
            marks = [pytest.mark.slow] if slow else []
            yield pytest.param(method, arch, marks=marks, id=f"{method}-{arch}")


@pytest.mark.parametrize("method_name,arch", list(_cases()))
def test_method_contract(method_name, arch):
    build, side = ARCHITECTURES[arch]
    torch.manual_seed(0)
    model = build().eval()
    method = registry.methods(PM)[method_name]
    try:
        method.check(model, PM)
    except XvizError as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip()
        return
    inputs = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    before = _state(model)
    try:
        explanations = explain_tensors(model, inputs, [method_name], topk=2, pm=PM)
    except XvizError as exc:  # a refusal that needs the forward pass (cam: is the head GAP + one linear?)
        explanations = []
        assert str(exc).strip() and "\n" not in str(exc).strip()
    after = _state(model)
    for exp in explanations:
        assert exp.raw.ndim == 4 and exp.raw.shape[:2] == (2, 2), exp.raw.shape
        assert torch.isfinite(torch.from_numpy(exp.raw)).all() and torch.isfinite(torch.from_numpy(exp.maps)).all()
        assert exp.maps.shape == (2, 2, side, side)
    for k, v in before[0].items():
        assert torch.equal(v, after[0][k]), f"{method_name} changed {k}"
    assert before[1:] == after[1:], f"{method_name} left modes, requires_grad, grads or hooks changed"
