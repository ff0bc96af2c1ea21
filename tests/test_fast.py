"""The fast path (fast=True, --fast, --autocast, --compile) and the shared pass of input-gradient methods."""

import numpy as np
import pytest
import torch

from xviz.errors import XvizError
from xviz.explainer import explain_tensors
from xviz.models import load_model

CAMS = ["gradcam", "gradcampp"]


def _model(name, pm):
    torch.manual_seed(0)
    loaded = load_model(name, weights="none", pm=pm)
    if name.startswith("vit"):  # torchvision starts the head at zero: every score and gradient would be 0
        torch.nn.init.normal_(loaded.module.heads.head.weight, std=0.02)
    return loaded


def _assert_fast_close(loaded, size, pm, fast=True, tolerance=1e-2):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    reference = explain_tensors(loaded, x, CAMS, pm=pm)
    quick = explain_tensors(loaded, x, CAMS, pm=pm, fast=fast)
    for a, b in zip(reference, quick):
        assert a.method == b.method and np.array_equal(a.targets, b.targets)
        assert a.maps.max() == 1.0  # a real map, not a constant one that any mode matches
        assert np.abs(a.maps - b.maps).max() <= tolerance, (a.method, np.abs(a.maps - b.maps).max())


def test_fast_maps_equal_fp32_on_resnet18_and_the_model_is_left_as_found(pm):
    loaded = _model("resnet18", pm)
    weights = {k: (v.data_ptr(), v.stride(), v.clone()) for k, v in loaded.module.state_dict().items()}
    _assert_fast_close(loaded, 96, pm)
    for k, v in loaded.module.state_dict().items():
        ptr, stride, value = weights[k]
        assert v.data_ptr() == ptr and v.stride() == stride and torch.equal(v, value), k  # same memory, layout, values


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "vgg16", "densenet121", "vit_b_16"])
def test_fast_maps_within_1e_2_of_fp32(pm, name):
    _assert_fast_close(_model(name, pm), 224, pm)


def test_autocast_runs_and_stays_near_fp32_on_resnet18(pm):
    """What a GPU's --autocast runs, here on the CPU: activations and gradients are captured in fp32."""
    loaded = _model("resnet18", pm)
    _assert_fast_close(loaded, 96, pm, fast="bf16", tolerance=5e-2)


def test_a_bad_fast_mode_is_a_one_line_error(pm, tiny, images):
    with pytest.raises(XvizError, match="fast=`fp8` is not a fast mode"):
        explain_tensors(tiny, images, ["gradcam"], layer="body.3", pm=pm, fast="fp8")


@pytest.mark.slow
def test_compiled_forward_gives_the_eager_maps(pm, tiny, images):
    methods = ["gradcam", "saliency", "guided-backprop"]
    eager = explain_tensors(tiny, images, methods, layer="body.3", pm=pm)
    for _ in range(2):  # the second call reuses the compiled code
        compiled = explain_tensors(tiny, images, methods, layer="body.3", pm=pm, compile=True)
        for a, b in zip(eager, compiled):
            np.testing.assert_allclose(a.maps, b.maps, atol=1e-5)


def test_cli_fast_writes_the_same_overlays(run_cli, tmp_path):
    from pathlib import Path

    samples = Path(__file__).resolve().parents[1] / "plugins" / "xviz_zoo" / "assets" / "samples"
    for flags, out in (([], "plain"), (["--fast"], "fast")):
        code, _, err = run_cli("explain", "--model", "xviz-demo", "--out", tmp_path / out, *flags, samples)
        assert code == 0, err
    plain = sorted(p.name for p in (tmp_path / "plain").iterdir())
    assert plain == sorted(p.name for p in (tmp_path / "fast").iterdir()) and len(plain) == 6


INPUT_GRADIENT_METHODS = ["saliency", "guided-backprop", "guided-gradcam"]


def test_input_gradient_methods_share_the_one_forward_pass(pm, tiny, images):
    calls = []
    handle = tiny.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        explain_tensors(tiny, images, ["gradcam", *INPUT_GRADIENT_METHODS], layer="body.3", pm=pm, topk=2)
    finally:
        handle.remove()
    assert len(calls) == 1


@pytest.mark.parametrize("topk", [1, 2])
def test_methods_together_give_the_maps_each_gives_alone(pm, tiny, images, topk):
    """The guided ReLU rule must not leak into the plain gradients of the same pass, nor the reverse."""
    methods = ["gradcam", *INPUT_GRADIENT_METHODS]
    together = explain_tensors(tiny, images, methods, layer="body.3", pm=pm, topk=topk)
    for exp in together:
        [alone] = explain_tensors(tiny, images, [exp.method], layer="body.3", pm=pm, topk=topk)
        np.testing.assert_allclose(exp.raw, alone.raw, rtol=1e-5, atol=1e-6)
