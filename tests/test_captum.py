"""The captum-backed attributions (plugins/xviz_captum) against independent references: closed forms
on linear and quadratic models, a hand-written guided backward, a guided-ReLU copy of real models,
IG completeness, per-target top-k, bounded internal batches, the model left as found, the CLI."""

import copy
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from xviz.errors import XvizError
from xviz.explainer import explain_tensors
from xviz_captum import (GuidedBackprop, GuidedGradCAM, IntegratedGradients, Occlusion, Saliency, SmoothGrad,
                         SmoothIntegratedGradients)

NAMES = ["integrated-gradients", "saliency", "guided-backprop", "guided-gradcam", "occlusion", "smoothgrad",
         "integrated-gradients-smooth"]
SAMPLE = "plugins/xviz_zoo/assets/samples/winged.png"


def run(model, x, method, **kw):
    [exp] = explain_tensors(model, x, [method], **kw)
    return exp


def linear(classes=4, size=8, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, classes)).eval()


def batch(n=2, size=8, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def weights_of(model, targets, size=8):
    """(N, K, 3, H, W) rows of the linear layer for each target."""
    return model[1].weight.detach()[torch.as_tensor(targets)].view(*np.shape(targets), 3, size, size)


# ---- closed forms on a linear model f(x) = W x + b -------------------------------------------------------------

def test_integrated_gradients_of_a_linear_model_is_x_times_w(pm):
    model, x = linear(), batch()
    exp = run(model, x, IntegratedGradients(n_steps=7), topk=2, pm=pm)
    expected = (x[:, None] * weights_of(model, exp.targets)).sum(2)  # zero baseline: IG = (x - 0) * W
    np.testing.assert_allclose(exp.raw, expected.numpy(), rtol=1e-4, atol=1e-6)
    assert exp.signed and exp.raw.min() < 0 < exp.raw.max()


def test_saliency_of_a_linear_model_is_abs_w_max_over_channels(pm):
    model, x = linear(), batch()
    exp = run(model, x, "saliency", topk=3, pm=pm)
    expected = weights_of(model, exp.targets).abs().amax(2)
    np.testing.assert_allclose(exp.raw, expected.numpy(), rtol=1e-6, atol=0)
    assert not exp.signed


def test_occlusion_of_a_linear_model_is_the_mean_contribution_of_the_patches_covering_a_pixel(pm):
    model, x = linear(), batch()
    exp = run(model, x, Occlusion(window=4, stride=2), topk=2, pm=pm)
    w = weights_of(model, exp.targets)
    for n in range(2):
        for k in range(2):
            contribution = (x[n] * w[n, k]).sum(0)  # (8, 8): what each pixel adds to the score
            total, count = torch.zeros(8, 8), torch.zeros(8, 8)
            for top in range(0, 5, 2):
                for left in range(0, 5, 2):
                    drop = contribution[top:top + 4, left:left + 4].sum()  # S(x) - S(x with the patch zeroed)
                    total[top:top + 4, left:left + 4] += drop
                    count[top:top + 4, left:left + 4] += 1
            np.testing.assert_allclose(exp.raw[n, k], (total / count).numpy(), rtol=1e-4, atol=1e-5)


def test_occlusion_default_window_scales_with_the_input():
    assert Occlusion().sizes(64, 64) == (8, 4)
    assert Occlusion().sizes(224, 224) == (28, 14)
    assert Occlusion().sizes(8, 8) == (2, 1)


def test_smoothgrad_of_a_linear_model_is_the_analytic_gradient(pm):
    model, x = linear(), batch()
    exp = run(model, x, SmoothGrad(samples=5, stdev=0.3), pm=pm)
    np.testing.assert_allclose(exp.raw, weights_of(model, exp.targets).abs().amax(2).numpy(), rtol=1e-6)


class Quadratic(nn.Module):
    """S_t(x) = sum_ij V_tij x_0ij^2: dS_t/dx_0 = 2 V_t x_0, zero for the other channels."""

    def __init__(self, classes=3, size=4):
        super().__init__()
        self.v = nn.Parameter(torch.randn(classes, size, size, generator=torch.Generator().manual_seed(3)))

    def forward(self, x):
        return (x[:, 0] ** 2).flatten(1) @ self.v.flatten(1).T


def test_smoothgrad_is_the_expected_abs_gradient_under_gaussian_noise_of_the_stated_sigma(pm):
    model, x = Quadratic(), batch(1, 4)
    samples, stdev = 400, 0.2
    exp = run(model, x, SmoothGrad(samples=samples, stdev=stdev), target=1, pm=pm)
    sigma = stdev * float(x.max() - x.min())
    mu, v = x[0, 0].double(), model.v[1].detach().double()
    z = mu / sigma
    phi = torch.exp(-z ** 2 / 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    folded = sigma * 2 * phi + mu * (2 * cdf - 1)  # E|mu + sigma Z|
    expected = 2 * v.abs() * folded
    stderr = 2 * v.abs() * torch.sqrt(mu ** 2 + sigma ** 2 - folded ** 2) / math.sqrt(samples)
    assert ((torch.from_numpy(exp.raw[0, 0]).double() - expected).abs() / stderr).max() < 5
    plain = run(model, x, "saliency", target=1, pm=pm).raw[0, 0]  # without noise: 2 |V| |x|
    np.testing.assert_allclose(plain, (2 * v.abs() * mu.abs()).numpy(), rtol=1e-5)
    assert np.abs(exp.raw[0, 0] - plain).max() > 0.1  # the noise does change the map


def test_smooth_integrated_gradients_of_a_linear_model_is_x_times_w_on_average(pm):
    model, x = linear(), batch(1)
    samples, stdev = 200, 0.1
    exp = run(model, x, SmoothIntegratedGradients(samples=samples, stdev=stdev, n_steps=3), target=2, pm=pm)
    w = weights_of(model, [[2]])[0, 0]
    expected = (x[0] * w).sum(0)
    sigma = stdev * float(x.max() - x.min())
    stderr = sigma * w.pow(2).sum(0).sqrt() / math.sqrt(samples)  # sum_c W_c mean(eps_c)
    assert ((torch.from_numpy(exp.raw[0, 0]) - expected).abs() / stderr).max() < 5
    assert exp.signed


def test_noise_is_seeded_per_image_and_leaves_the_global_rng_alone(pm, tiny, images):
    state = torch.get_rng_state()
    a = run(tiny, images, SmoothGrad(samples=4), pm=pm).raw
    assert torch.equal(torch.get_rng_state(), state)
    np.testing.assert_array_equal(a, run(tiny, images, SmoothGrad(samples=4), pm=pm).raw)
    assert not np.allclose(a, run(tiny, images, SmoothGrad(samples=4, seed=1), pm=pm).raw)
    alone = run(tiny, images[2:3], SmoothGrad(samples=4), pm=pm).raw  # the same map outside the batch
    np.testing.assert_allclose(alone[0], a[2], rtol=1e-5, atol=1e-7)


def stated_reductions() -> dict[str, str]:
    """``{method: "sum" | "mean" | "maximum"}``: how docs/attributions.md says each method reduces the
    colour channels."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "attributions.md").read_text()
    rows = re.findall(r"^\| (sum|mean|maximum) over channels \| ([^|]+) \|", text, re.M)
    return {name: how for how, names in rows for name in re.findall(r"`([^`]+)`", names)}


SMALL = {"integrated-gradients": IntegratedGradients(n_steps=5), "saliency": Saliency(),
         "guided-backprop": GuidedBackprop(), "guided-gradcam": GuidedGradCAM(),
         "occlusion": Occlusion(window=4, stride=2),
         "smoothgrad": SmoothGrad(samples=5, internal_batch_size=2),
         "integrated-gradients-smooth": SmoothIntegratedGradients(samples=3, n_steps=4, internal_batch_size=4)}


def captum_alone(name: str, model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """(1, C, H, W): captum called directly, as a user would, for one image and one target."""
    from captum import attr

    m = SMALL[name]
    if name in ("smoothgrad", "integrated-gradients-smooth"):
        torch.manual_seed(m.seed)
        base = attr.Saliency(model) if name == "smoothgrad" else attr.IntegratedGradients(model)
        options = {"abs": True} if name == "smoothgrad" else dict(
            n_steps=m.n_steps, baselines=0.0, method="gausslegendre", internal_batch_size=m.internal_batch_size)
        return attr.NoiseTunnel(base).attribute(x, nt_type="smoothgrad", nt_samples=m.samples,
                                                nt_samples_batch_size=m.internal_batch_size, target=target,
                                                stdevs=m.stdev * float(x.max() - x.min()), **options)
    if name == "integrated-gradients":
        return attr.IntegratedGradients(model).attribute(x, baselines=0.0, target=target, n_steps=m.n_steps,
                                                         method="gausslegendre")
    if name == "saliency":
        return attr.Saliency(model).attribute(x, target=target, abs=True)
    if name == "guided-backprop":
        return attr.GuidedBackprop(model).attribute(x, target=target)
    if name == "guided-gradcam":
        return attr.GuidedGradCam(model, model.body[3]).attribute(x, target=target, interpolate_mode="bilinear")
    return attr.Occlusion(model).attribute(x, sliding_window_shapes=(3, 4, 4), strides=(3, 2, 2), baselines=0.0,
                                           target=target)


@pytest.mark.parametrize("name", NAMES)
def test_each_map_is_captum_alone_reduced_over_channels_as_the_attributions_page_states(pm, tiny, images, name):
    """Every (image, target) of a top-3 batch equals captum called for that image and target alone (the noise
    methods after the same ``torch.manual_seed``), reduced over the channels as docs/attributions.md says."""
    stated = stated_reductions()
    assert set(stated) == set(NAMES)
    reduce = {"sum": lambda a: a.sum(1), "mean": lambda a: a.mean(1), "maximum": lambda a: a.amax(1)}[stated[name]]
    exp = run(tiny, images[:2], SMALL[name], layer="body.3", topk=3, pm=pm)
    for n in range(2):
        for k in range(3):
            expected = reduce(captum_alone(name, tiny, images[n:n + 1], int(exp.targets[n, k])))[0].detach()
            np.testing.assert_allclose(exp.raw[n, k], expected.numpy(), rtol=1e-4,  # batched vs alone: float error
                                       atol=1e-5 * float(expected.abs().max()), err_msg=f"image {n}, target {k}")


# ---- guided backprop ------------------------------------------------------------------------------------------

def test_guided_backprop_equals_a_hand_written_backward_on_a_relu_mlp(pm):
    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 10), nn.ReLU(inplace=True), nn.Linear(10, 6),
                          nn.ReLU(inplace=True), nn.Linear(6, 3)).eval()
    x = batch(3, 4)
    exp = run(model, x, "guided-backprop", topk=2, pm=pm)
    w1, b1, w2, b2, w3 = (t.detach() for t in (model[1].weight, model[1].bias, model[3].weight, model[3].bias,
                                               model[5].weight))
    for n in range(3):
        z1 = w1 @ x[n].flatten() + b1
        z2 = w2 @ torch.relu(z1) + b2
        for k in range(2):
            g = w3[exp.targets[n, k]]                     # dS/da2
            g = torch.relu(g) * (z2 > 0)                  # guided ReLU: positive gradients, active units
            g = torch.relu(w2.T @ g) * (z1 > 0)
            gx = (w1.T @ g).view(3, 4, 4).sum(0)
            np.testing.assert_allclose(exp.raw[n, k], gx.numpy(), rtol=1e-5, atol=1e-7)
    plain = run(model, x, "saliency", topk=2, pm=pm)
    assert not np.allclose(np.abs(exp.raw), plain.raw)  # guided differs from the plain gradient here


class _GuidedReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return z.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        return grad.clamp_min(0) * (z > 0)


class _GuidedReLU(nn.Module):
    def forward(self, z):
        return _GuidedReLUFn.apply(z)


def guided_copy(model):
    """A copy of ``model`` whose nn.ReLU modules have the guided backward (an independent reference)."""
    clone = copy.deepcopy(model).eval()
    for parent in list(clone.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, name, _GuidedReLU())
    return clone


def reference_guided(model, x, targets):
    guided = guided_copy(model)
    xs = x.clone().requires_grad_(True)
    out = guided(xs)
    maps = []
    for k in range(targets.shape[1]):
        (g,) = torch.autograd.grad(out.gather(1, torch.as_tensor(targets[:, k:k + 1])).sum(), xs, retain_graph=True)
        maps.append(g.sum(1))
    return torch.stack(maps, 1)


def resnet18():
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


@pytest.mark.parametrize("which", ["demo", "resnet18"])
def test_guided_backprop_and_guided_gradcam_match_a_guided_relu_copy(pm, demo, which):
    model, x, layer = (demo.module, batch(2, 64), "features") if which == "demo" else (resnet18(), batch(1, 64), "layer4")
    gb = run(model, x, "guided-backprop", topk=2, pm=pm)
    expected = reference_guided(model, x, gb.targets)
    scale = expected.abs().max()
    np.testing.assert_allclose(gb.raw / scale, (expected / scale).numpy(), atol=1e-5)
    ggc, cam = explain_tensors(model, x, ["guided-gradcam", "gradcam"], layer=layer, topk=2, pm=pm)
    up = torch.nn.functional.interpolate(torch.from_numpy(cam.raw), size=x.shape[-2:], mode="bilinear",
                                         align_corners=False)
    expected = expected * up
    scale = expected.abs().max()
    assert scale > 0
    np.testing.assert_allclose(ggc.raw / scale, (expected / scale).numpy(), atol=1e-5)


def test_guided_methods_refuse_a_model_without_relu_modules(pm):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    for name in ["guided-backprop", "guided-gradcam"]:
        with pytest.raises(XvizError, match="nn.ReLU") as info:
            explain_tensors(model, batch(1, 8), [name], layer="0", pm=pm)
        assert "\n" not in str(info.value) and f"`{name}`" in str(info.value)


# ---- integrated gradients on the demo model ------------------------------------------------------------------

def test_integrated_gradients_completeness_on_the_demo_model(pm, demo):
    from xviz.images import read_image

    x = demo.preprocessing.tensor(read_image(SAMPLE))[None]
    exp = run(demo, x, "integrated-gradients", topk=2, pm=pm)
    with torch.no_grad():
        gap = demo.module(x)[0] - demo.module(torch.zeros_like(x))[0]
    for k in range(2):
        expected = float(gap[exp.targets[0, k]])
        assert abs(exp.raw[0, k].sum() - expected) <= 0.01 * abs(expected) + 1e-3, (exp.raw[0, k].sum(), expected)


# ---- targets, batches, state ---------------------------------------------------------------------------------

@pytest.mark.parametrize("method", [IntegratedGradients(n_steps=5), Saliency(), GuidedBackprop(), GuidedGradCAM(),
                                    Occlusion(window=4, stride=4), SmoothGrad(samples=4, internal_batch_size=3),
                                    SmoothIntegratedGradients(samples=2, n_steps=3)], ids=lambda m: m.name)
def test_topk_maps_equal_single_target_runs(pm, tiny, images, method):
    exp = run(tiny, images[:2], method, layer="body.3", topk=3, pm=pm)
    assert exp.raw.shape == (2, 3, 16, 16) and len(set(exp.targets[0])) == 3
    for n in range(2):
        for k in range(3):
            single = run(tiny, images[n:n + 1], method, layer="body.3", target=int(exp.targets[n, k]), pm=pm)
            np.testing.assert_allclose(single.raw[0, 0], exp.raw[n, k], rtol=1e-4, atol=1e-6)


class Counting(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.sizes = model, []

    def forward(self, x):
        self.sizes.append(len(x))
        return self.model(x)


@pytest.mark.parametrize("method", [IntegratedGradients(n_steps=6, internal_batch_size=4),
                                    SmoothGrad(samples=5, internal_batch_size=4),
                                    SmoothIntegratedGradients(samples=3, n_steps=4, internal_batch_size=4),
                                    Occlusion(window=4, stride=4, batch_size=4)], ids=lambda m: m.name)
def test_internal_batch_size_bounds_the_batch_the_model_sees(pm, tiny, method):
    model = Counting(tiny)
    x = batch(3, 16)  # 3 images x 2 targets = 6 rows
    run(model, x, method, topk=2, pm=pm)
    assert model.sizes[0] == 3  # the shared forward pass
    # filled up to the bound (integrated-gradients-smooth: captum splits 3 noisy copies x 4 steps into chunks
    # of 4 // 3 = 1 step of the 3 copies)
    assert max(model.sizes[1:]) == (3 if isinstance(method, SmoothIntegratedGradients) else 4), model.sizes


def test_captum_alone_does_not_bound_the_batch_by_internal_batch_size(tiny):
    """Why xviz splits the rows itself: captum's internal_batch_size never splits the examples."""
    from captum.attr import IntegratedGradients as CaptumIG

    model = Counting(tiny)
    CaptumIG(model).attribute(batch(9, 16), target=torch.zeros(9, dtype=torch.long), n_steps=6, internal_batch_size=4)
    assert max(model.sizes) == 9


def test_the_model_is_left_as_found(pm, tiny, images):
    tiny.train()
    tiny.body[0].weight.requires_grad_(False)  # partly frozen by the user
    before = [m.training for m in tiny.modules()], [p.requires_grad for p in tiny.parameters()]
    rng = torch.get_rng_state()
    methods = [IntegratedGradients(n_steps=3), Saliency(), GuidedBackprop(), GuidedGradCAM(), Occlusion(window=8),
               SmoothGrad(samples=2), SmoothIntegratedGradients(samples=2, n_steps=2)]
    exps = explain_tensors(tiny, images, methods, layer="body.3", topk=2, pm=pm)
    assert all(np.isfinite(e.raw).all() and np.abs(e.raw).max() > 0 for e in exps)
    assert ([m.training for m in tiny.modules()], [p.requires_grad for p in tiny.parameters()]) == before
    assert all(p.grad is None for p in tiny.parameters())
    for m in tiny.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("name", NAMES)
def test_every_method_runs_on_resnet18(pm, name):
    from xviz.registry import methods

    method = methods(pm)[name]
    small = {"integrated-gradients": IntegratedGradients(n_steps=4), "smoothgrad": SmoothGrad(samples=3),
             "integrated-gradients-smooth": SmoothIntegratedGradients(samples=2, n_steps=2),
             "occlusion": Occlusion(window=16, stride=16)}.get(name, method)
    exp = run(resnet18(), batch(1, 64), small, layer="layer4", topk=2, pm=pm)
    assert exp.raw.shape == (1, 2, 64, 64) and np.isfinite(exp.raw).all() and np.abs(exp.raw).max() > 0
    assert exp.signed == method.signed
    assert exp.maps.min() >= (-1 if method.signed else 0)
    np.testing.assert_allclose(np.abs(exp.maps).reshape(2, -1).max(1), 1)  # each map scaled to max |M| = 1


def test_methods_are_registered_with_formulas_and_papers(pm):
    from xviz.registry import methods

    found = methods(pm)
    signed = {"integrated-gradients", "guided-backprop", "guided-gradcam", "occlusion", "integrated-gradients-smooth"}
    for name in NAMES:
        m = found[name]
        assert m.signed == (name in signed) and m.uses_layer == (name == "guided-gradcam")
        assert "M_ij =" in type(m).__doc__ and m.reference.startswith("https://")
    assert (found["integrated-gradients"].n_steps, found["integrated-gradients"].internal_batch_size) == (50, 32)


def test_bad_parameters_and_windows_are_one_line_errors(pm, tiny, images):
    for make in [lambda: IntegratedGradients(n_steps=0), lambda: SmoothGrad(stdev=-1),
                 lambda: Occlusion(window=0), lambda: IntegratedGradients(internal_batch_size=1.5 - 2)]:
        with pytest.raises(XvizError, match="must be a number"):
            make()
    with pytest.raises(XvizError, match="larger than the 16x16 input") as info:
        run(tiny, images, Occlusion(window=20), pm=pm)
    assert "\n" not in str(info.value)


# ---- end to end -----------------------------------------------------------------------------------------------

def test_cli_writes_attribution_overlays(run_cli, tmp_path):
    out = tmp_path / "o"
    code, stdout, err = run_cli("explain", "--model", "xviz-demo", "--method", "integrated-gradients,saliency",
                                "--out", out, SAMPLE)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["winged_integrated-gradients.png", "winged_saliency.png"]
    for path in out.iterdir():
        picture = np.asarray(Image.open(path).convert("RGB"))
        assert picture.shape == (256, 256, 3) and picture.std() > 10  # 64 px enlarged 4x (at least 224)
    assert "integrated-gradients" in stdout and "saliency" in stdout


@pytest.mark.slow
def test_registered_defaults_on_the_demo_model(pm, demo):
    from xviz.images import read_image

    x = demo.preprocessing.tensor(read_image(SAMPLE))[None]
    for exp in explain_tensors(demo, x, NAMES, topk=2, pm=pm):
        assert exp.raw.shape == (1, 2, 64, 64) and np.isfinite(exp.raw).all()
