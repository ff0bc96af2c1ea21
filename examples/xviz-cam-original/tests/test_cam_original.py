"""Tests of the `cam` plugin: against torchcam's CAM (an independent implementation), on a tiny model
and on xviz's bundled demo model; the one-line errors on models CAM does not apply to; the command
line with the plugin registered in-process (`xviz.testing`); and that xviz finds the installed package
through its entry point.

Run them after `pip install -e .[test]`.
"""

import os
import subprocess
import sys
from importlib.metadata import version

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchcam.methods import CAM as TorchcamCAM

import xviz
from xviz import explain_tensors
from xviz.errors import XvizError
import xviz_cam_original
from xviz_cam_original.cam import CAM
from xviz_zoo.demo import SAMPLES  # the six sample images bundled with xviz's demo model

pytest_plugins = ["xviz.testing"]  # the `xviz_cli` fixture: xviz run in-process with a plugin registered
SUMMARY = "CAM: channels weighted by the classifier of a GAP + linear head (Zhou et al. 2016)"


def gap_linear_cnn(seed=0):
    """conv -> ReLU -> conv -> ReLU -> global average pooling -> linear: the network CAM is made for."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


def images(n=3, size=16):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def torchcam_maps(model, layer, fc, x, targets, normalized):
    """torchcam's CAM of ``targets`` (N, K): (N, K, h, w)."""
    maps = []
    with TorchcamCAM(model, layer, fc, input_shape=tuple(x.shape[1:])) as extractor:
        with torch.no_grad():
            model(x)
        for k in range(targets.shape[1]):
            [m] = extractor(targets[:, k].tolist(), normalized=normalized)
            maps.append(m)
    return torch.stack(maps, dim=1).numpy()


# --- against torchcam -----------------------------------------------------------------------------

def test_equals_torchcam_on_a_tiny_model():
    model, x = gap_linear_cnn(), images()
    [exp] = explain_tensors(model, x, ["cam"], layer="3", topk=2)
    assert exp.raw.shape == (3, 2, 16, 16)
    raw = torchcam_maps(model, "3", "6", x, exp.targets, normalized=False)
    np.testing.assert_allclose(exp.raw, raw, rtol=1e-5, atol=1e-6 * np.abs(raw).max())
    assert (raw < 0).any()  # the maps are not all positive, so "no ReLU" is really tested
    # same resolution as the input, so xviz's min-max normalised maps are torchcam's normalised maps
    normalized = torchcam_maps(model, "3", "6", x, exp.targets, normalized=True)
    np.testing.assert_allclose(exp.maps, normalized, atol=1e-5)


def test_equals_torchcam_on_the_demo_model():
    model = xviz.load_model("xviz-demo")
    paths = sorted(SAMPLES.glob("*.png"))
    x = torch.stack([model.preprocessing.tensor(Image.open(p).convert("RGB")) for p in paths])
    [exp] = explain_tensors(model, x, ["cam"], topk=3)
    assert exp.layer == "features"  # the demo model's default layer, the one its pooling reads
    assert list(exp.prediction_names) == [p.stem for p in paths]  # each sample is named after its class
    raw = torchcam_maps(model.module, "features", "classifier", x, exp.targets, normalized=False)
    assert raw.shape == (6, 3, 16, 16)
    np.testing.assert_allclose(exp.raw, raw, rtol=1e-4, atol=1e-5 * np.abs(raw).max())


def test_relu_of_cam_is_gradcam_times_the_layer_area():
    """On a GAP + linear network dS_t/dA_kij = W[t, k] / (h w), so GradCAM = ReLU(CAM) / (h w)."""
    model = xviz.load_model("xviz-demo")
    x = torch.stack([model.preprocessing.tensor(Image.open(p).convert("RGB")) for p in sorted(SAMPLES.glob("*.png"))])
    cam, gradcam = explain_tensors(model, x, ["cam", "gradcam"], topk=2)
    h, w = cam.raw.shape[-2:]
    np.testing.assert_allclose(np.maximum(cam.raw, 0) / (h * w), gradcam.raw, rtol=1e-4,
                               atol=1e-6 * gradcam.raw.max())


def test_target_by_name():
    model = xviz.load_model("xviz-demo")
    [exp] = xviz.explain(model, [SAMPLES / "winged.png"], methods=["cam"], target="tailed")
    assert exp.target_names == (("tailed",),)
    x = model.preprocessing.tensor(Image.open(SAMPLES / "winged.png").convert("RGB"))[None]
    raw = torchcam_maps(model.module, "features", "classifier", x, torch.tensor([[exp.targets[0, 0]]]), False)
    np.testing.assert_allclose(exp.raw, raw, rtol=1e-4, atol=1e-5 * np.abs(raw).max())


# --- models CAM does not apply to -----------------------------------------------------------------

def test_model_without_a_linear_layer_is_refused_before_any_work():
    # the classifier is a 1x1 convolution, so there is no nn.Linear: check() refuses it
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with pytest.raises(XvizError) as info:
        CAM().check(model)
    message = str(info.value)
    assert "global average pooling" in message and "`gradcam`" in message and "`Sequential`" in message
    assert "\n" not in message
    with pytest.raises(XvizError, match="no nn.Linear"):
        explain_tensors(model, images(), ["cam"], layer="1")


def test_linear_of_the_right_shape_that_is_not_the_head():
    # a two-layer head whose hidden width equals the layer's channels: Linear(8, 5) fits the shape,
    # but the scores are not Linear(GAP(A)), so CAM must refuse rather than draw a wrong map
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 5)).eval()
    CAM().check(model)  # has linear layers: passes the static check
    with pytest.raises(XvizError) as info:
        explain_tensors(model, images(), ["cam"], layer="1")
    message = str(info.value)
    assert "layer `1`" in message and "--layer" in message and "`gradcam`" in message
    assert "\n" not in message


def test_layer_that_does_not_feed_the_pooling():
    # features.17 is the last convolution of the demo model: 64 channels like the classifier's input,
    # but batch norm and ReLU follow it before the pooling
    model = xviz.load_model("xviz-demo")
    with pytest.raises(XvizError, match="layer `features.17`"):
        xviz.explain(model, [SAMPLES / "horned.png"], methods=["cam"], layer="features.17")


def test_cli_error_is_one_line(tmp_path, capsys):
    from xviz.cli import main

    code = main(["explain", "--model", "xviz-demo", "--method", "cam", "--layer", "features.17",
                 "--out", str(tmp_path), str(SAMPLES / "horned.png")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("xviz: error: `cam` needs layer `features.17`") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


# --- the command line, the plugin registered in-process (no install needed) --------------------

def test_listed_and_used_through_the_command_line(xviz_cli, tmp_path):
    xviz_cli.register(xviz_cam_original)  # as xviz registers an installed plugin: a misspelled hook fails here
    listed = xviz_cli.run("methods")
    assert listed.code == 0
    assert ["cam", "xviz_cam_original", SUMMARY] in [line.split(None, 2) for line in listed.lines]
    result = xviz_cli.run("explain", "--model", "xviz-demo", "--method", "cam", "--out", tmp_path,
                          SAMPLES / "horned.png")
    assert result.code == 0, result.err
    assert (tmp_path / "horned_cam.png").is_file() and "wrote 1 overlay(s)" in result.out
    refused = xviz_cli.run("explain", "--model", "xviz-demo", "--method", "cam", "--layer", "features.17",
                           "--out", tmp_path, SAMPLES / "horned.png")
    assert refused.code == 2 and refused.err.startswith("xviz: error: `cam` needs layer `features.17`")


def test_registered_as_its_entry_point_says():
    # the same string as pyproject.toml's [project.entry-points.xviz], loaded as xviz loads it
    from xviz.testing import XvizRunner, run_xviz

    runner = XvizRunner()
    runner.register_entry_point("xviz_cam_original", "xviz_cam_original")
    assert runner.pm.infos["xviz_cam_original"].source == "registered by a test"
    assert "cam" in [line.split()[0] for line in runner.run("methods").lines]
    assert "cam" not in [line.split()[0] for line in run_xviz("methods").lines]  # another runner: not registered


# --- installed: xviz finds the plugin through its entry point --------------------------------------

def xviz_command(*args) -> list[str]:
    """Run ``python -m xviz ARGS`` as a user would; returns its output lines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XVIZ_")}  # load every installed plugin
    done = subprocess.run([sys.executable, "-m", "xviz", *args], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_listed_by_xviz_methods_and_xviz_plugins():
    [row] = [line.split(None, 2) for line in xviz_command("methods") if line.startswith("cam ")]
    assert row == ["cam", "xviz_cam_original", SUMMARY]
    [row] = [line.split() for line in xviz_command("plugins") if line.startswith("xviz_cam_original ")]
    assert row == ["xviz_cam_original", "entry", "point", "of", "xviz-cam-original", version("xviz-cam-original")]


def test_xviz_explain_writes_overlays(tmp_path, capsys):
    from xviz.cli import main

    code = main(["explain", "--model", "xviz-demo", "--method", "cam,gradcam", "--out", str(tmp_path), str(SAMPLES)])
    out = capsys.readouterr().out
    assert code == 0
    stems = sorted(p.stem for p in SAMPLES.glob("*.png"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{s}_{m}.png" for s in stems for m in ("cam", "gradcam"))
    with Image.open(tmp_path / "horned_cam.png") as overlay:
        assert overlay.size == (256, 256) and overlay.mode == "RGB"
    assert "wrote 12 overlay(s)" in out
