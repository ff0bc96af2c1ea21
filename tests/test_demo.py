"""The bundled demo model: what it carries, how well it classifies, where its CAMs point."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from xviz.checkpoint import read_checkpoint
from xviz.data.synthetic import CLASSES, SyntheticParts
from xviz.explainer import explain_tensors

from test_cli import SAMPLES

CHECKPOINT = SAMPLES.parent / "xviz-demo.pt"


def test_checkpoint_carries_what_is_needed_to_use_it():
    data = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)  # safe loading works
    assert data["format"] == "xviz-checkpoint/1" and data["arch"] == "xviz-demo"
    assert data["class_names"] == list(CLASSES)
    assert data["preprocessing"]["crop"] == 64 and len(data["preprocessing"]["mean"]) == 3
    assert len(data["history"]) == data["config"]["epochs"] and data["history"][-1]["test_acc"] >= 0.95
    assert CHECKPOINT.stat().st_size < 1_000_000
    assert read_checkpoint(CHECKPOINT)["arch"] == "xviz-demo"


def _test_batches(demo, batch=150):
    data = SyntheticParts("test", transform=demo.preprocessing.tensor)
    for start in range(0, len(data), batch):
        idx = range(start, min(start + batch, len(data)))
        yield (torch.stack([data[i][0] for i in idx]), np.array([data[i][1] for i in idx]),
               [data.masks(i) for i in idx])


def pointing_game(demo, method):
    """Fraction of test images whose map maximum lies inside the object (and inside the class part)."""
    hits = part_hits = total = correct = 0
    for x, labels, masks in _test_batches(demo):
        (exp,) = explain_tensors(demo, x, [method])
        correct += int((exp.predictions == labels).sum())
        for heat, mask in zip(exp.maps[:, 0], masks):
            r, c = np.unravel_index(heat.argmax(), heat.shape)
            hits += bool(mask["object"][r, c])
            part_hits += bool(mask["part"][r, c])
            total += 1
    return correct / total, hits / total, part_hits / total


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_accuracy_and_pointing_game_on_the_test_split(demo, method):
    accuracy, on_object, on_part = pointing_game(demo, method)
    assert accuracy >= 0.95
    assert on_object >= 0.75  # measured 0.79 for both; uniform random points land on the object ~0.08
    assert on_part >= 0.30  # measured 0.35; the class-defining part covers ~2% of the image


class Scaled(nn.Module):
    def __init__(self, inner, factor):
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, x):
        return self.inner(x) * self.factor


def test_gradcampp_equals_pytorch_grad_cam_on_the_trained_model(demo):
    """On the bundled model the gradients at `features` are ~1e-3, so pytorch-grad-cam's +1e-6 next to
    G^2 ~ 1e-6 moves its maps (by 0.06 here); with scores scaled by 1e4 it is negligible and both agree."""
    from pytorch_grad_cam import GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x, _, _ = next(_test_batches(demo, 16))
    model = Scaled(copy.deepcopy(demo.module), 1e4)
    (exp,) = explain_tensors(model, x, ["gradcampp"], layer="inner.features")
    with GradCAMPlusPlus(model=model, target_layers=[model.inner.features]) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in exp.targets[:, 0]])
    assert np.abs(exp.maps[:, 0] - ref).max() <= 1e-5


@pytest.mark.slow
def test_the_documented_command_reproduces_the_demo_model(run_cli, tmp_path):
    code, stdout, err = run_cli("train", "--recipe", "xviz-demo", "--out", tmp_path / "run")
    assert code == 0, err
    ours = read_checkpoint(tmp_path / "run" / "last.pt")
    assert ours["history"][-1]["test_acc"] >= 0.95
    assert ours["config"] == read_checkpoint(CHECKPOINT)["config"] | {"out": str(tmp_path / "run")}
