"""GradCAM and GradCAM++ against independent references, and the promises of the shared pass."""

import copy
import gc
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xviz.errors import XvizError
from xviz.explainer import explain_tensors, normalize_maps

from conftest import TinyCNN


def run(model, x, methods=("gradcam",), **kw):
    return {e.method: e for e in explain_tensors(model, x, list(methods), **kw)}


def closed_form_gradcampp(model, x, layer, targets):
    """GradCAM++ eq. 19 recomputed literally in float64: alpha = G^2 / (2 G^2 + sum_ab A_ab G^3)."""
    m = copy.deepcopy(model).double().eval()
    store = {}
    dict(m.named_modules())[layer].register_forward_hook(lambda mod, i, o: store.__setitem__("a", o))
    logits = m(x.double())
    a = store["a"]
    (g,) = torch.autograd.grad(logits.gather(1, targets.view(-1, 1)).sum(), a)
    g2, g3 = g ** 2, g ** 3
    denominator = 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g3
    alpha = torch.where(denominator != 0, g2 / torch.where(denominator != 0, denominator, 1.0), 0.0)
    w = (alpha * torch.relu(g)).sum(dim=(2, 3))
    cam = torch.relu((w[:, :, None, None] * a).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False).flatten(1)
    lo, hi = cam.min(1, keepdim=True).values, cam.max(1, keepdim=True).values
    return ((cam - lo) / (hi - lo)).view(-1, *x.shape[-2:]).detach().numpy()


def test_gradcam_raw_equals_captum_layergradcam(tiny, images):
    from captum.attr import LayerGradCam

    exp = run(tiny, images, layer="body.4")["gradcam"]
    ref = LayerGradCam(tiny, tiny.body[4]).attribute(images, target=torch.as_tensor(exp.targets[:, 0]),
                                                     relu_attributions=True)
    ref = ref[:, 0].detach().numpy()
    assert exp.raw.shape == (4, 1, 16, 16)
    assert np.abs(ref).max() > 1e-3
    assert np.abs(exp.raw[:, 0] - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_maps_equal_pytorch_grad_cam_at_input_size(tiny, images, method):
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if method == "gradcampp":  # scores ~1e4 make pytorch-grad-cam's +1e-6 in alpha negligible (it is not at ~1)
        with torch.no_grad():
            tiny.head[3].weight.mul_(200)
    exp = run(tiny, images, [method], layer="body.4")[method]
    peer_cls = GradCAM if method == "gradcam" else GradCAMPlusPlus
    peer_model = copy.deepcopy(tiny)
    with peer_cls(model=peer_model, target_layers=[peer_model.body[4]]) as cam:
        ref = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in exp.targets[:, 0]])
    assert exp.maps.shape == (4, 1, 16, 16) and ref.shape == (4, 16, 16)
    assert np.abs(exp.maps[:, 0] - ref).max() <= 1e-5


def test_gradcampp_equals_closed_form_in_float64_on_a_random_resnet():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(3, 3, 96, 96)
    exp = run(model, x, ["gradcampp"], layer="layer4")["gradcampp"]
    ref = closed_form_gradcampp(model, x, "layer4", torch.as_tensor(exp.targets[:, 0]))
    assert np.abs(exp.maps[:, 0] - ref).max() <= 1e-5
    assert ref.max() > 0.99  # a real map, not all zeros


def test_gradcampp_equals_closed_form_on_the_demo_model(demo):
    from xviz.data.synthetic import SyntheticParts

    data = SyntheticParts("test", size=8, transform=demo.preprocessing.tensor)
    x = torch.stack([data[i][0] for i in range(8)])
    exp = run(demo, x, ["gradcampp"])["gradcampp"]
    ref = closed_form_gradcampp(demo.module, x, "features", torch.as_tensor(exp.targets[:, 0]))
    assert np.abs(exp.maps[:, 0] - ref).max() <= 1e-5


def test_topk_in_one_pass_equals_one_target_at_a_time(tiny, images, monkeypatch):
    calls = {"forward": 0, "grad": 0}
    tiny.register_forward_hook(lambda *a: calls.__setitem__("forward", calls["forward"] + 1))
    real_grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        calls["grad"] += 1
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    both = run(tiny, images, ["gradcam", "gradcampp"], layer="body.4", topk=3)
    assert calls == {"forward": 1, "grad": 1}
    monkeypatch.setattr(torch.autograd, "grad", real_grad)
    for method, exp in both.items():
        assert exp.maps.shape == (4, 3, 16, 16)
        logits = tiny(images)
        assert (exp.targets == logits.topk(3, dim=1).indices.numpy()).all()
        for k in range(3):
            for i in range(4):
                single = run(tiny, images[i:i + 1], [method], layer="body.4", target=int(exp.targets[i, k]))[method]
                assert np.abs(single.raw[0, 0] - exp.raw[i, k]).max() <= 1e-5 * max(1e-12, np.abs(single.raw).max())


def test_target_by_name_and_index(demo):
    x = torch.randn(2, 3, 64, 64)
    by_name = run(demo, x, target="Winged")["gradcam"]
    by_index = run(demo, x, target="2")["gradcam"]
    assert by_name.target_names == (("winged",), ("winged",))
    np.testing.assert_array_equal(by_name.maps, by_index.maps)
    with pytest.raises(XvizError, match="unknown class `wingd`.*`winged`"):
        run(demo, x, target="wingd")
    with pytest.raises(XvizError, match="out of range"):
        run(demo, x, target="6")


def test_scores_and_predictions_are_softmax_probabilities(tiny, images):
    exp = run(tiny, images, topk=2, layer="body.4")["gradcam"]
    probs = torch.softmax(tiny(images), 1).detach()
    np.testing.assert_allclose(exp.prediction_scores, probs.max(1).values.numpy(), rtol=1e-6)
    np.testing.assert_allclose(exp.scores[:, 0], exp.prediction_scores, rtol=1e-6)
    assert (exp.scores[:, 0] >= exp.scores[:, 1]).all()


def _inplace_free(model):
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return twin


@pytest.mark.parametrize("layer", ["features.28", "features.29"])
def test_inplace_relu_after_the_layer_on_vgg16(layer):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    got = run(model, x, ["gradcam", "gradcampp"], layer=layer)
    ref = run(_inplace_free(model), x, ["gradcam", "gradcampp"], layer=layer)
    for method in got:
        np.testing.assert_allclose(got[method].raw, ref[method].raw, rtol=1e-5, atol=1e-12)
        assert got[method].raw.max() > 0
    assert model.features[29].inplace  # untouched


class TupleOut(nn.Module):
    def __init__(self, inner, kind):
        super().__init__()
        self.inner, self.kind = inner, kind

    def forward(self, x):
        logits = self.inner(x)
        return (logits, x.mean()) if self.kind == "tuple" else {"aux": x.mean(), "logits": logits}


@pytest.mark.parametrize("kind", ["tuple", "dict"])
def test_models_returning_tuples_or_dicts(tiny, images, kind):
    plain = run(tiny, images, layer="body.4")["gradcam"]
    wrapped = run(TupleOut(tiny, kind), images, layer="inner.body.4")["gradcam"]
    np.testing.assert_array_equal(plain.raw, wrapped.raw)


def _state(model):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()])


def test_model_left_exactly_as_found(images):
    model = TinyCNN()
    model.train()
    model.body[1].eval()
    model.body[0].weight.requires_grad_(False)
    before = _state(model)
    bn_stats = model.body[1].running_mean.clone()
    reference = run(TinyCNN().eval(), images, layer="body.4")["gradcam"]
    exp = run(model, images, ["gradcam", "gradcampp"], layer="body.4", topk=2)["gradcam"]
    assert _state(model) == before
    assert torch.equal(model.body[1].running_mean, bn_stats)  # explained in eval mode: BN stats untouched
    assert all(p.grad is None for p in model.parameters())  # no parameter gradients
    np.testing.assert_allclose(exp.raw[:, 0], reference.raw[:, 0], rtol=1e-5, atol=1e-9)  # eval mode, no dropout


@pytest.mark.parametrize("context", ["no_grad", "inference_mode", "frozen"])
def test_works_without_grad(tiny, images, context):
    expected = run(tiny, images, ["gradcampp"], layer="body.4")["gradcampp"]
    if context == "frozen":
        for p in tiny.parameters():
            p.requires_grad_(False)
        got = run(tiny, images, ["gradcampp"], layer="body.4")["gradcampp"]
        assert not any(p.requires_grad for p in tiny.parameters())
    else:
        ctx = torch.no_grad() if context == "no_grad" else torch.inference_mode()
        with ctx:
            x = images.clone()
            got = run(tiny, x, ["gradcampp"], layer="body.4")["gradcampp"]
    np.testing.assert_array_equal(got.maps, expected.maps)


def _live_tensors():
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance on some torch objects warns about deprecations
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def test_no_memory_growth_over_200_calls(tiny, images):
    run(tiny, images, ["gradcam", "gradcampp"], layer="body.4", topk=2)
    before = _live_tensors()
    for _ in range(200):
        run(tiny, images, ["gradcam", "gradcampp"], layer="body.4", topk=2)
    assert _live_tensors() - before <= 2


def test_automatic_layer_is_the_last_spatial_module(tiny, images, pm):
    from xviz.explainer import resolve_layer

    assert resolve_layer(tiny, None, images, None, pm) == ("body", "last spatial")
    with pytest.warns(UserWarning, match="explaining layer `body`, the last with a spatial output"):
        exp = run(tiny, images, pm=pm)["gradcam"]
    assert exp.layer == "body" and exp.raw.shape[-2:] == (8, 8)


def test_default_layer_of_registered_models(pm):
    import torchvision

    from xviz.explainer import resolve_layer

    x = torch.zeros(1, 3, 32, 32)
    assert resolve_layer(torchvision.models.resnet18(), None, x, "resnet18", pm) == ("layer4", "plugin")
    assert resolve_layer(torchvision.models.vgg16(), None, x, "vgg16", pm) == ("features.29", "plugin")


def test_bad_layers(tiny, images):
    with pytest.raises(XvizError, match=r"no layer `body\.9`.*`body\.\d`"):
        run(tiny, images, layer="body.9")
    with pytest.raises(XvizError, match=r"layer `head\.3` outputs shape \(4, 5\)"):
        run(tiny, images, layer="head.3")


def test_unknown_method(tiny, images):
    with pytest.raises(XvizError, match="unknown method `gradcamm`: did you mean `gradcam`"):
        run(tiny, images, ["gradcamm"])


def test_normalize_maps_closed_form():
    raw = torch.tensor([[[[1.0, 3.0], [2.0, 5.0]]], [[[2.0, 2.0], [2.0, 2.0]]]])
    maps = normalize_maps(raw, (2, 2))
    np.testing.assert_allclose(maps[0, 0].numpy(), [[0.0, 0.5], [0.25, 1.0]])
    assert maps[1].abs().sum() == 0  # a constant map carries no information
    up = normalize_maps(raw[:1], (4, 4))[0, 0]  # upsampled first, so the map spans exactly [0, 1]
    ref = F.interpolate(raw[:1], size=(4, 4), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(up.numpy(), ((ref - ref.min()) / (ref.max() - ref.min())).numpy(), atol=1e-7)
    assert up.min() == 0 and up.max() == 1
    signed = normalize_maps(torch.tensor([[[[-2.0, 1.0]]]]), (1, 2), signed=True)
    np.testing.assert_allclose(signed[0, 0].numpy(), [[-1.0, 0.5]])


def test_normalize_maps_on_a_fixed_range_keeps_the_values():
    raw = torch.tensor([[[[0.2, 0.6], [0.5, 1.5]]], [[[0.5, 0.5], [0.5, 0.5]]]])
    maps = normalize_maps(raw, (2, 2), value_range=(0.0, 1.0))
    np.testing.assert_allclose(maps[0, 0].numpy(), [[0.2, 0.6], [0.5, 1.0]], atol=1e-7)  # clipped at hi
    np.testing.assert_allclose(maps[1, 0].numpy(), 0.5)  # a constant map keeps its value on a fixed scale
    up = normalize_maps(raw[:1], (4, 4), value_range=(0.0, 2.0))[0, 0]
    ref = F.interpolate(raw[:1], size=(4, 4), mode="bilinear", align_corners=False)[0, 0] / 2
    np.testing.assert_allclose(up.numpy(), ref.numpy(), atol=1e-7)
    signed = normalize_maps(torch.tensor([[[[-2.0, 1.0]]]]), (1, 2), signed=True, value_range=(-4.0, 4.0))
    np.testing.assert_allclose(signed[0, 0].numpy(), [[-0.5, 0.25]])


@pytest.mark.parametrize("layer", ["layer4.0.bn2", "layer4.1.bn2", "layer3"])
def test_inplace_add_in_resnet_blocks(layer):
    """`out += identity` modifies a block's bn2 output in place; xviz must explain the value before it."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    exp = run(model, x, ["gradcam"], layer=layer)["gradcam"]
    store = {}

    def keep(module, inputs, output):  # independent reference: a copy of the value, and a tensor hook
        store["a"] = output.detach().clone()
        output.register_hook(lambda g: store.__setitem__("g", g))

    handle = dict(model.named_modules())[layer].register_forward_hook(keep)
    model(x).gather(1, torch.as_tensor(exp.targets)).sum().backward()
    handle.remove()
    model.zero_grad(set_to_none=True)
    ref = torch.relu((store["g"].mean((2, 3), keepdim=True) * store["a"]).sum(1))
    np.testing.assert_allclose(exp.raw[:, 0], ref.numpy(), rtol=1e-4, atol=1e-6 * ref.abs().max().item())


def test_constant_maps_stay_zero_after_upsampling():
    """A map that is constant at feature size must not become an upsampling-noise heatmap."""
    for raw in (torch.full((1, 1, 1, 1), 4.81), torch.full((1, 1, 2, 2), 0.3), torch.zeros(1, 1, 7, 7)):
        assert normalize_maps(raw, (224, 224)).abs().max() == 0


def test_non_spatial_layer_and_half_precision(tiny, images):
    with pytest.raises(XvizError, match=r"layer `head\.0` outputs shape \(4, 12, 1, 1\), not a spatial map"):
        run(tiny, images, layer="head.0")
    full = run(tiny, images, ["gradcampp"], layer="body.4")["gradcampp"]
    half = run(copy.deepcopy(tiny).to(torch.bfloat16), images, ["gradcampp"], layer="body.4")["gradcampp"]
    assert (full.targets == half.targets).all() and np.abs(full.maps - half.maps).max() < 0.1


def test_ambiguous_class_name():
    from xviz.explainer import class_index

    assert class_index("Crane", ["crane", "dog"], 2) == 0
    with pytest.raises(XvizError, match="class name `crane` is ambiguous: classes 0, 2; give the index"):
        class_index("crane", ["crane", "dog", "crane"], 3)
