"""XGradCAM, HiResCAM, LayerCAM, EigenCAM and ScoreCAM against pytorch-grad-cam and torchcam, on a tiny
model and on the bundled demo model; the shared pass and ScoreCAM's chunking."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xviz.explainer import explain_tensors

NEW = ["xgradcam", "hirescam", "layercam", "eigencam", "scorecam"]


def run(model, x, methods, **kw):
    return {e.method: e for e in explain_tensors(model, x, list(methods), **kw)}


def pgc_maps(method, model, layer, x, targets, monkeypatch=None):
    """pytorch-grad-cam's map at input size for one target per image."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = {"gradcam": pgc.GradCAM, "xgradcam": pgc.XGradCAM, "hirescam": pgc.HiResCAM, "layercam": pgc.LayerCAM,
           "eigencam": pgc.EigenCAM, "scorecam": pgc.ScoreCAM}[method]
    peer = copy.deepcopy(model)
    layers = [dict(peer.named_modules())[name] for name in ([layer] if isinstance(layer, str) else layer)]
    with cls(model=peer, target_layers=layers) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])


def patch_pgc(monkeypatch, scorecam_align_corners_false=True, eigencam_sign=True):
    """Switch pytorch-grad-cam to the two conventions xviz documents (see docs/methods.md)."""
    import pytorch_grad_cam.eigen_cam as eigen_cam
    import pytorch_grad_cam.score_cam as score_cam
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction

    class Upsample(torch.nn.Module):
        def __init__(self, size):
            super().__init__()
            self.size = size

        def forward(self, t):
            return F.interpolate(t, size=self.size, mode="bilinear", align_corners=False)

    if scorecam_align_corners_false:
        monkeypatch.setattr(score_cam.torch.nn, "UpsamplingBilinear2d", Upsample)
    if eigencam_sign:
        monkeypatch.setattr(eigen_cam, "get_2d_projection", get_2d_projection_with_sign_correction)


def demo_batch(demo, n=8):
    from xviz.data.synthetic import SyntheticParts

    data = SyntheticParts("test", size=n, transform=demo.preprocessing.tensor)
    return torch.stack([data[i][0] for i in range(n)])


@pytest.mark.parametrize("method", NEW)
def test_equal_to_pytorch_grad_cam_on_the_tiny_model(tiny, images, method, monkeypatch):
    patch_pgc(monkeypatch)
    layer = "body"  # 8x8 at 16x16 input: ScoreCAM's masks are upsampled
    exp = run(tiny, images, [method], layer=layer)[method]
    ref = pgc_maps(method, tiny, layer, images, exp.targets[:, 0])
    assert exp.maps.shape == (4, 1, 16, 16) and ref.shape == (4, 16, 16)
    assert exp.raw.max() > 0 and np.ptp(ref, axis=(1, 2)).min() > 0.5  # real maps
    assert np.abs(exp.maps[:, 0] - ref).max() <= 1e-5


@pytest.mark.parametrize("method", NEW)
def test_equal_to_pytorch_grad_cam_on_the_demo_model(demo, method, monkeypatch):
    patch_pgc(monkeypatch)
    x = demo_batch(demo, 4 if method == "scorecam" else 8)
    exp = run(demo, x, [method])[method]
    assert exp.layer == "features"
    ref = pgc_maps(method, demo.module, "features", x, exp.targets[:, 0])
    assert np.abs(exp.maps[:, 0] - ref).max() <= 1e-5


def test_scorecam_equals_unpatched_peers_without_upsampling(tiny, images):
    """At a layer with the input's resolution both peers' upsampling conventions coincide with xviz's."""
    from torchcam.methods import ScoreCAM

    exp = run(tiny, images, ["scorecam"], layer="body.4")["scorecam"]
    assert exp.raw.shape[-2:] == images.shape[-2:]
    ref = pgc_maps("scorecam", tiny, "body.4", images, exp.targets[:, 0])
    assert np.abs(exp.maps[:, 0] - ref).max() <= 1e-5
    peer = copy.deepcopy(tiny)
    with ScoreCAM(peer, target_layer="body.4", batch_size=7, input_shape=(3, 16, 16)) as extractor:
        peer(images)
        [tc] = extractor(class_idx=exp.targets[:, 0].tolist())
    assert np.abs(exp.maps[:, 0] - tc.numpy()).max() <= 1e-5


def test_scorecam_with_peer_upsampling_differs_only_slightly(demo, monkeypatch):
    """pytorch-grad-cam upsamples ScoreCAM's masks with align_corners=True; the measured effect is small."""
    x = demo_batch(demo, 4)
    exp = run(demo, x, ["scorecam"])["scorecam"]
    ref = pgc_maps("scorecam", demo.module, "features", x, exp.targets[:, 0])
    diff = np.abs(exp.maps[:, 0] - ref).max()
    assert 1e-3 < diff < 0.15, diff  # 0.060 measured


def test_eigencam_sign_convention_and_pgc_default(demo, monkeypatch):
    """Unpatched pytorch-grad-cam keeps LAPACK's arbitrary sign: it agrees with xviz on the images where
    that sign already puts the larger magnitude on the positive side, and only there."""
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    x = demo_batch(demo, 8)
    exp = run(demo, x, ["eigencam"])["eigencam"]
    ref = pgc_maps("eigencam", demo.module, "features", x, exp.targets[:, 0])
    store = {}
    handle = demo.module.features.register_forward_hook(lambda m, i, o: store.__setitem__("a", o.detach()))
    with torch.no_grad():
        demo.module(x)
    handle.remove()
    p = get_2d_projection(store["a"].numpy())
    agrees = np.abs(p.min(axis=(1, 2))) <= np.abs(p.max(axis=(1, 2)))
    same = np.abs(exp.maps[:, 0] - ref).max(axis=(1, 2)) <= 1e-5
    np.testing.assert_array_equal(same, agrees)
    raw = exp.raw[:, 0]  # the convention: the largest magnitude of the projection is positive
    assert (raw.max(axis=(1, 2)) > 0).all()


@pytest.mark.parametrize("method", ["xgradcam", "layercam", "scorecam"])
def test_equal_to_torchcam_at_feature_size(tiny, images, method):
    """torchcam normalises at the layer's resolution: compare min-max normalised raw maps."""
    import torchcam.methods as tcm

    cls = {"xgradcam": tcm.XGradCAM, "layercam": tcm.LayerCAM, "scorecam": tcm.ScoreCAM}[method]
    layer = "body.4"
    exp = run(tiny, images, [method], layer=layer)[method]
    peer = copy.deepcopy(tiny)
    with cls(peer, target_layer=layer, input_shape=(3, 16, 16)) as extractor:
        scores = peer(images)
        kwargs = {} if method == "scorecam" else {"scores": scores}
        [ref] = extractor(class_idx=exp.targets[:, 0].tolist(), **kwargs)
    raw = torch.as_tensor(exp.raw[:, 0])
    lo, hi = raw.amin((1, 2), keepdim=True), raw.amax((1, 2), keepdim=True)
    ours = (raw - lo) / (hi - lo)
    assert np.abs(ours.numpy() - ref.detach().numpy()).max() <= 1e-5


def test_raw_formulas_by_hand(tiny, images):
    """The raw maps from A and G taken independently (a tensor hook), in float64."""
    m = copy.deepcopy(tiny).double()
    store = {}

    def keep(module, inputs, output):
        store["a"] = output.detach().clone()
        output.register_hook(lambda g: store.__setitem__("g", g))

    dict(m.named_modules())["body"].register_forward_hook(keep)
    exp = run(tiny, images, ["xgradcam", "hirescam", "layercam"], layer="body")
    t = torch.as_tensor(exp["hirescam"].targets)
    m(images.double()).gather(1, t).sum().backward()
    a, g = store["a"], store["g"]
    refs = {
        "xgradcam": torch.relu(((g * a).sum((2, 3), keepdim=True) / a.sum((2, 3), keepdim=True) * a).sum(1)),
        "hirescam": torch.relu((g * a).sum(1)),
        "layercam": torch.relu((torch.relu(g) * a).sum(1)),
    }
    for name, ref in refs.items():
        np.testing.assert_allclose(exp[name].raw[:, 0], ref.numpy(), rtol=1e-4, atol=1e-6 * ref.abs().max().item())


def test_all_methods_share_one_pass_and_topk(tiny, images, monkeypatch):
    calls = {"grad": 0}
    real_grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        calls["grad"] += 1
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    forwards = []
    tiny.register_forward_hook(lambda m, i, o: forwards.append(i[0].shape[0]))
    gradient_methods = ["gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "eigencam"]
    together = run(tiny, images, gradient_methods, layer="body", topk=3)
    assert calls["grad"] == 1 and forwards == [4]
    monkeypatch.setattr(torch.autograd, "grad", real_grad)
    for name in gradient_methods:
        for k in range(3):
            alone = run(tiny, images, [name], layer="body", target=int(together[name].targets[0, k]))[name]
            np.testing.assert_allclose(alone.raw[0, 0], together[name].raw[0, k], rtol=1e-5, atol=1e-7)
    eig = together["eigencam"].raw
    np.testing.assert_array_equal(eig[:, 0], eig[:, 2])  # class-agnostic


def test_scorecam_topk_from_one_set_of_masked_forwards(tiny, images):
    from xviz_cam import ScoreCAM

    forwards = []
    tiny.register_forward_hook(lambda m, i, o: forwards.append(i[0].shape[0]))
    method = ScoreCAM(batch_size=5)
    exp = run(tiny, images, [method], layer="body", topk=3)["scorecam"]
    channels = 12
    assert forwards[0] == 4 and sum(forwards[1:]) == 4 * channels  # one shared pass, then N * C masked images
    assert max(forwards[1:]) == 5  # bounded chunks
    for k in range(3):
        single = run(tiny, images, [ScoreCAM(batch_size=48)], layer="body", target=int(exp.targets[1, k]))["scorecam"]
        np.testing.assert_allclose(single.raw[1, 0], exp.raw[1, k], rtol=1e-5, atol=1e-7)


def test_new_methods_leave_the_model_as_found(tiny, images):
    tiny.train()
    before = [m.training for m in tiny.modules()], [p.requires_grad for p in tiny.parameters()]
    run(tiny, images, NEW, layer="body", topk=2)
    assert ([m.training for m in tiny.modules()], [p.requires_grad for p in tiny.parameters()]) == before
    assert all(p.grad is None for p in tiny.parameters())
    assert all(not m._forward_hooks for m in tiny.modules())


def test_methods_listed_with_formulas(pm):
    from xviz.registry import methods

    found = methods(pm)
    for name in NEW:
        assert name in found
        doc = type(found[name]).__doc__
        assert "M" in doc and "=" in doc and found[name].reference.startswith("http")


# ---- several layers fused ------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["gradcam", "layercam", "eigencam", "scorecam"])
def test_several_layers_equal_pytorch_grad_cam_multi_layer(tiny, images, method, monkeypatch):
    patch_pgc(monkeypatch)
    layers = ["body.0", "body"]  # 16x16 and 8x8; body.0 is upstream of body
    exp = run(tiny, images, [method], layer=layers)[method]
    assert exp.layer == "body.0,body" and exp.raw.shape == (4, 1, 16, 16)
    ref = pgc_maps(method, tiny, layers, images, exp.targets[:, 0])
    assert np.abs(exp.maps[:, 0] - ref).max() <= 1e-5


def test_several_layers_in_one_pass_equal_layers_explained_alone(tiny, images, monkeypatch):
    from xviz.explainer import fuse_layer_maps

    alone = {name: run(tiny, images, ["gradcam", "hirescam"], layer=name, topk=2) for name in ("body.0", "body.3", "body")}
    calls = {"grad": 0, "forward": 0}
    real_grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        calls["grad"] += 1
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    tiny.register_forward_hook(lambda *a: calls.__setitem__("forward", calls["forward"] + 1))
    fused = run(tiny, images, ["gradcam", "hirescam"], layer="body.0,body.3,body", topk=2)
    assert calls == {"grad": 1, "forward": 1}
    for method, exp in fused.items():
        expected = fuse_layer_maps([torch.as_tensor(alone[n][method].raw) for n in alone], (16, 16))
        np.testing.assert_allclose(exp.raw, expected.numpy(), atol=1e-5)
        assert exp.maps.min() == 0 and exp.maps.max() == 1


def test_fuse_layer_maps_is_the_mean_of_normalised_maps():
    from xviz.explainer import fuse_layer_maps

    a = torch.tensor([[[[0.0, 2.0], [4.0, 4.0]]]])  # normalised: 0, .5, 1, 1
    b = torch.full((1, 1, 2, 2), 3.0)  # constant: contributes 0
    np.testing.assert_allclose(fuse_layer_maps([a, b], (2, 2))[0, 0].numpy(), [[0.0, 0.25], [0.5, 0.5]])


def test_layer_lists_and_bad_names(tiny, images):
    from xviz.errors import XvizError
    from xviz.explainer import layer_list

    assert layer_list("a, b,a") == ["a", "b"] and layer_list(["a", "b,c"]) == ["a", "b", "c"] and layer_list(None) == []
    single = run(tiny, images, ["gradcam"], layer=["body"])["gradcam"]
    np.testing.assert_array_equal(single.raw, run(tiny, images, ["gradcam"], layer="body")["gradcam"].raw)
    with pytest.raises(XvizError, match=r"no layer `body\.9`"):
        run(tiny, images, ["gradcam"], layer="body.0,body.9")
    with pytest.raises(XvizError, match=r"layer `head\.3` outputs shape"):
        run(tiny, images, ["gradcam"], layer="body,head.3")


def test_cli_explain_several_layers(run_cli, tmp_path):
    from PIL import Image

    for i in range(2):
        Image.fromarray((np.random.default_rng(i).random((64, 64, 3)) * 255).astype("uint8")).save(tmp_path / f"{i}.png")
    code, out, err = run_cli("explain", "--model", "xviz-demo", "--method", "gradcam,eigencam", "--layer",
                             "features.3,features", "--batch-size", "1", "--out", tmp_path / "out",
                             tmp_path / "0.png", tmp_path / "1.png")
    assert code == 0, err
    written = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert written == ["0_eigencam.png", "0_gradcam.png", "1_eigencam.png", "1_gradcam.png"]


def test_xgradcam_warns_once_on_signed_activations_and_not_after_a_relu():
    import warnings

    import torchvision

    from xviz.explainer import explain_tensors
    from xviz_cam.methods import SignedActivationsWarning

    torch.manual_seed(0)
    mobilenet = torchvision.models.mobilenet_v3_small(num_classes=4).eval()  # Hardswish: signed `features`
    inputs = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with pytest.warns(SignedActivationsWarning, match="layer `features` has negative activations.*use gradcam"):
        explain_tensors(mobilenet, inputs, ["xgradcam"], layer="features")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SignedActivationsWarning)
        explain_tensors(mobilenet, inputs, ["xgradcam"], layer="features")  # once per model and layer
        resnet = torchvision.models.resnet18(num_classes=4).eval()  # layer4 ends in a ReLU
        explain_tensors(resnet, inputs, ["xgradcam"], layer="layer4")
