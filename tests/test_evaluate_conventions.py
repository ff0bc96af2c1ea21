"""`xviz evaluate`'s conventions: per-image seeds (numbers independent of the batch size), the pointing
game's tolerance and ties, ROAD against pytorch-grad-cam, captum's infidelity and sensitivity, reruns
from the settings file."""

import csv
import json

import numpy as np
import pytest
import torch
from torch import nn

from xviz.evaluation import (ROAD_PERCENTILES, evaluate, image_seed, infidelity_scores, pixel_ranks, pointing_game,
                             pointing_tolerance, road_order_values, road_probabilities, road_seed, sensitivity_scores)
from xviz.methods import Method


class Steps(Method):
    """A map of three levels (most pixels tied): channel 0 of the input, quantised."""

    name = "steps"
    uses_layer = False

    def compute(self, ctx):
        m = (ctx.inputs.detach()[:, :1] * 2).round().clamp(0, 2)
        return m.expand(-1, ctx.targets.shape[1], -1, -1).clone()


class Images:
    """Ten random 16 x 16 images of a user's own data set, with an object mask each."""

    def __init__(self, n=10, size=16):
        g = torch.Generator().manual_seed(5)
        self.x = torch.rand(n, 3, size, size, generator=g) - 0.3
        self.region = np.zeros((size, size), bool)
        self.region[4:9, 3:8] = True

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], 0

    def masks(self, i):
        return {"object": self.region}


# --- seeds -----------------------------------------------------------------------------------------

def test_an_images_tie_order_depends_on_its_own_seed_not_its_batch():
    maps = torch.zeros(3, 6, 6)
    maps[:, :2] = 1.0  # 12 tied maxima, 24 tied zeros
    seeds = [image_seed(0, i) for i in range(3)]
    together = pixel_ranks(maps, seeds)
    alone = torch.cat([pixel_ranks(maps[i:i + 1], [s]) for i, s in enumerate(seeds)])
    assert torch.equal(together, alone)
    assert not torch.equal(together[0], together[1])  # each image its own order
    assert (together[:, :12] < 12).all()  # ties are split, the order of the values kept
    assert image_seed(0, 3) != image_seed(1, 3) and image_seed(0, "a.png") == image_seed(0, "a.png")


def test_two_batch_sizes_give_identical_numbers(tiny, pm):
    kwargs = dict(metrics=["deletion", "insertion", "drop", "pointing", "road", "infidelity"], steps=4,
                  road_percentiles=(30, 70), infidelity_samples=3, pm=pm, progress=False, reference=True)
    one = evaluate(tiny, [Steps(), "gradcam"], Images(), batch_size=1, **kwargs)
    four = evaluate(tiny, [Steps(), "gradcam"], Images(), batch_size=4, **kwargs)
    for row in one.rows:
        other = four[row.method].values
        assert set(row.values) == set(other)
        for column, value in row.values.items():
            # equal up to float32 rounding of differently batched forwards (ties used to move them by 1e-3)
            assert value == pytest.approx(other[column], rel=1e-5, abs=1e-6), (row.method, column)
    assert one.settings["batch_size"] == 1 and four.settings["batch_size"] == 4
    again = evaluate(tiny, [Steps()], Images(), batch_size=4, seed=1, **kwargs)
    assert again["steps"].values["deletion"] != pytest.approx(four["steps"].values["deletion"], abs=1e-9)


# --- pointing game ---------------------------------------------------------------------------------

def _region():
    r = torch.zeros(1, 20, 20, dtype=torch.bool)
    r[0, 5:10, 5:10] = True
    return r


def test_pointing_tolerance_in_pixels():
    m = torch.zeros(1, 20, 20)
    m[0, 7, 13] = 1.0  # 4 px right of the region's last column (9)
    assert not pointing_game(m, _region(), 0).item()
    assert not pointing_game(m, _region(), 3.9).item()
    assert pointing_game(m, _region(), 4.0).item()
    m = torch.zeros(1, 20, 20)
    m[0, 13, 13] = 1.0  # diagonal: sqrt(4^2 + 4^2) = 5.66 px from the corner (9, 9)
    assert not pointing_game(m, _region(), 5.6).item() and pointing_game(m, _region(), 5.7).item()
    assert pointing_tolerance((224, 224)) == 15.0 and pointing_tolerance((64, 80)) == pytest.approx(15 * 64 / 224)


def test_pointing_ties_and_negative_evidence():
    m = torch.zeros(1, 20, 20)
    m[0, 0, 0] = m[0, 6, 6] = 2.0  # two tied maxima, the first (raster order) outside: any tied maximum counts
    assert pointing_game(m, _region()).item()
    m[0, 6, 6] = 1.0
    assert not pointing_game(m, _region()).item()
    negative = -torch.rand(1, 20, 20)
    negative[0, 6, 6] = -1e-6  # its maximum lies inside, but a map without positive evidence points nowhere
    assert not pointing_game(negative, _region(), 100).item()
    signed = negative.clone()
    signed[0, 15, 15] = -10.0
    signed[0, 7, 7] = 0.5  # the positive part decides, not the magnitude of negative values
    assert pointing_game(signed, _region()).item()


# --- ROAD ------------------------------------------------------------------------------------------

def test_road_matches_pytorch_grad_cam_on_the_demo(demo, pm):
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    from xviz.datasets import load_dataset
    from xviz.explainer import explain_tensors

    data, _ = load_dataset("synthetic", "test", pm=pm, transform=demo.preprocessing.tensor)
    x = torch.stack([data[i][0] for i in (0, 7)])
    exp = explain_tensors(demo, x, ["gradcam"], pm=pm)[0]
    targets = torch.as_tensor(exp.targets[:, 0])
    seeds = [image_seed(0, i) for i in (0, 7)]
    ranks = pixel_ranks(torch.from_numpy(exp.maps[:, 0]), seeds)
    percentiles = (20, 60)
    ours = road_probabilities(demo.module, x, ranks, targets, seeds, percentiles)
    values = road_order_values(ranks).numpy().reshape(len(x), *x.shape[-2:])
    for kind, metric, most in (("morf", ROADMostRelevantFirst, True), ("lerf", ROADLeastRelevantFirst, False)):
        for i in range(len(x)):
            for j, p in enumerate(percentiles):
                torch.manual_seed(road_seed(seeds[i], most, p))  # pytorch-grad-cam draws from the global RNG
                theirs = metric(p)(x[i:i + 1], values[i:i + 1], [ClassifierOutputSoftmaxTarget(int(targets[i]))],
                                   demo.module, return_diff=False)
                assert ours[kind][i, j].item() == pytest.approx(float(theirs[0]), abs=1e-5), (kind, i, p)
    assert ROAD_PERCENTILES == (10, 30, 50, 70, 90)


# --- captum's metrics ------------------------------------------------------------------------------

def test_infidelity_and_sensitivity_are_captums(tiny, images):
    from captum.attr import Saliency
    from captum.metrics import infidelity, sensitivity_max

    targets = torch.tensor([0, 1, 2, 3])
    maps = images[:, 0].abs()
    seeds = [11, 12, 13, 14]
    ours = infidelity_scores(tiny, images, maps, targets, seeds, samples=4, noise=0.01)

    def forward(inputs):
        return torch.softmax(tiny(inputs), 1)

    def perturb(inputs):
        noise = 0.01 * torch.randn_like(inputs)
        return noise, inputs - noise

    for k in range(4):
        torch.manual_seed(seeds[k])
        theirs = infidelity(forward, perturb, images[k:k + 1], maps[k][None, None].expand(1, 3, 16, 16),
                            target=k, n_perturb_samples=4, normalize=True)
        assert ours[k].item() == pytest.approx(theirs.item(), rel=1e-6)

    saliency = Saliency(tiny)

    def explain(inputs, target):
        return saliency.attribute(inputs, target=target).abs().amax(1)

    def explain_tuple(inputs, target):  # captum hands an explanation function a tuple of inputs
        return explain(inputs[0], target)[:, None]

    ours = sensitivity_scores(explain, images, targets, seeds, samples=3, radius=0.05)
    for k in range(4):
        torch.manual_seed(seeds[k])
        theirs = sensitivity_max(lambda inputs: explain_tuple(inputs, k), images[k:k + 1], perturb_radius=0.05,
                                 n_perturb_samples=3)
        assert ours[k].item() == pytest.approx(theirs.item(), rel=1e-6)
    assert (ours > 0).all()


def test_sensitivity_through_evaluate_on_a_users_model(tiny, pm):
    results = evaluate(tiny, ["gradcam"], Images(n=2), metrics=["sensitivity"], sensitivity_samples=2,
                       reference=False, pm=pm, progress=False, rank_by="sensitivity")
    value = results["gradcam"].values["sensitivity"]
    assert np.isfinite(value) and value > 0 and results.settings["sensitivity_samples"] == 2


# --- settings and reruns ---------------------------------------------------------------------------

def test_settings_record_what_changes_numbers_and_rerun_exactly(run_cli, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    code, _, err = run_cli("evaluate", "--model", "xviz-demo", "--data", "synthetic", "--limit", 3, "--method",
                           "gradcam", "--metrics", "deletion,pointing,road", "--steps", 4, "--batch-size", 2,
                           "--tolerance", 2.5, "--seed", 7, "--no-reference", "--out", first)
    assert code == 0, err
    settings = json.loads((first / "evaluate_settings.json").read_text())
    for key, value in (("batch_size", 2), ("steps", 4), ("baseline", "blur"), ("seed", 7), ("pointing_tolerance", 2.5),
                       ("layer", "features"), ("road_percentiles", [10, 30, 50, 70, 90])):
        assert settings[key] == value, key
    assert settings["explained"] == "the predicted class of each image" and "torch" in settings["versions"]
    code, _, err = run_cli("evaluate", "--settings", first / "evaluate_settings.json", "--out", second)
    assert code == 0, err
    rows = [list(csv.DictReader(open(folder / "evaluate_results.csv"))) for folder in (first, second)]
    assert rows[0] == rows[1] and {"road", "road_morf", "road_lerf", "pointing_object"} <= set(rows[0][0])
    again = json.loads((second / "evaluate_settings.json").read_text())
    assert again["arguments"] == settings["arguments"] and again["batch_size"] == 2


def test_unreadable_settings_file_is_one_line(run_cli, tmp_path):
    (tmp_path / "bad.json").write_text("{}")
    code, out, err = run_cli("evaluate", "--settings", tmp_path / "bad.json", "--out", tmp_path / "o")
    assert code == 2 and "cannot read the evaluation settings" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    code, out, err = run_cli("evaluate", "--out", tmp_path / "o")
    assert code == 2 and "--data is required" in err
