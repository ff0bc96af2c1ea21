"""Vision transformers: token layers captured as grids, every CAM method on torchvision's vit_b_16
(weights=None, 224 px) against pytorch-grad-cam's reshape_transform."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from xviz.explainer import explain_tensors
from xviz.capture import capture_layer, token_grid_side

from test_cam_family import patch_pgc

LAYER = "encoder.layers.encoder_layer_11.ln_1"


def reshape_transform(tensor, height=14, width=14):  # pytorch-grad-cam's ViT tutorial
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


@pytest.fixture(scope="module")
def vit():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None).eval()
    with torch.no_grad():  # torchvision initialises the head to zero: every score would be 0
        model.heads.head.weight.normal_(0, 0.5)
    return model


@pytest.fixture(scope="module")
def vit_images():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))


def test_token_grid_side():
    assert token_grid_side(torch.zeros(2, 197, 8)) == 14
    assert token_grid_side(torch.zeros(2, 196, 8)) is None  # no class token
    assert token_grid_side(torch.zeros(2, 8, 14, 14)) is None


def test_token_capture_gradients_are_exact():
    """A toy token model: gradients to the captured grid equal those of a plain tensor hook on the tokens."""
    torch.manual_seed(0)
    block = nn.Sequential(nn.LayerNorm(6), nn.Linear(6, 6))
    head = nn.Linear(6, 3)

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.block, self.head = block, head

        def forward(self, tokens):
            out = self.block(tokens)
            return self.head(out[:, 0] + out[:, 1:].pow(2).mean(1))

    toy, tokens = Toy().eval(), torch.randn(2, 10, 6)
    with capture_layer(toy.block[0]) as captured:
        score = toy(tokens)[:, 1].sum()
    (grid_grad,) = torch.autograd.grad(score, captured.activation)
    assert captured.activation.shape == (2, 6, 3, 3)
    store = {}

    def keep(module, inputs, output):
        store["a"] = output
        output.register_hook(lambda g: store.__setitem__("g", g))

    handle = toy.block[0].register_forward_hook(keep)
    toy(tokens)[:, 1].sum().backward()
    handle.remove()
    np.testing.assert_allclose(grid_grad.numpy(), reshape_transform(store["g"], 3, 3).numpy(), rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(captured.activation.detach().numpy(), reshape_transform(store["a"], 3, 3).detach().numpy())


def test_vit_default_layer(pm):
    import torchvision

    from xviz.explainer import resolve_layer

    x = torch.zeros(1, 3, 224, 224)
    assert resolve_layer(torchvision.models.vit_b_16(), None, x, "vit_b_16", pm) == (LAYER, "plugin")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "eigencam"])
def test_vit_b_16_equals_pytorch_grad_cam_reshape_transform(vit, vit_images, method, monkeypatch):
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    patch_pgc(monkeypatch)
    exp = {e.method: e for e in explain_tensors(vit, vit_images, [method], layer=LAYER)}[method]
    assert exp.raw.shape == (2, 1, 14, 14) and exp.raw.max() > 0
    cls = {"gradcam": pgc.GradCAM, "gradcampp": pgc.GradCAMPlusPlus, "xgradcam": pgc.XGradCAM,
           "hirescam": pgc.HiResCAM, "layercam": pgc.LayerCAM, "eigencam": pgc.EigenCAM}[method]
    peer = copy.deepcopy(vit)
    layer = peer.encoder.layers.encoder_layer_11.ln_1
    with cls(model=peer, target_layers=[layer], reshape_transform=reshape_transform) as cam:
        ref = cam(input_tensor=vit_images, targets=[ClassifierOutputTarget(int(t)) for t in exp.targets[:, 0]])
    tolerance = 1e-4 if method != "gradcampp" else 0.2  # gradcampp: pytorch-grad-cam's +1e-6 (docs/methods.md)
    assert np.abs(exp.maps[:, 0] - ref).max() <= tolerance


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "eigencam", "scorecam"])
def test_small_vit_equals_pytorch_grad_cam(method, monkeypatch):
    """A 2-block torchvision VisionTransformer at 32 px (4x4 patches): every method, exactly."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                              num_classes=5).eval()
    with torch.no_grad():
        model.heads.head.weight.normal_(0, 1e3)  # large scores: pytorch-grad-cam's epsilons negligible
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    patch_pgc(monkeypatch)
    layer = "encoder.layers.encoder_layer_1.ln_1"
    exp = {e.method: e for e in explain_tensors(model, x, [method], layer=layer)}[method]
    assert exp.raw.shape == (3, 1, 4, 4) and exp.raw.max() > 0
    cls = {"gradcam": pgc.GradCAM, "gradcampp": pgc.GradCAMPlusPlus, "xgradcam": pgc.XGradCAM,
           "hirescam": pgc.HiResCAM, "layercam": pgc.LayerCAM, "eigencam": pgc.EigenCAM, "scorecam": pgc.ScoreCAM}[method]
    peer = copy.deepcopy(model)
    with cls(model=peer, target_layers=[dict(peer.named_modules())[layer]],
             reshape_transform=lambda t: reshape_transform(t, 4, 4)) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in exp.targets[:, 0]])
    # gradcampp: pytorch-grad-cam's +1e-6 in alpha still shows on LayerNorm tokens (2.5e-4 measured)
    assert np.abs(exp.maps[:, 0] - ref).max() <= (1e-3 if method == "gradcampp" else 1e-5)
