"""`xviz evaluate`: each metric on constructed cases whose answer is known, the sanity check, the CLI."""

import csv
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import xviz
from xviz import registry
from xviz.errors import XvizError
from xviz.evaluation import (RANDOM, auc, average_drop_increase, energy_pointing, evaluate, mask_by_map,
                           perturbation_curves, pixel_ranks, pointing_game, randomized_copy, spearman, ssim)
from xviz.methods import Method
from xviz.models import ModelSpec

SAMPLES = "plugins/xviz_zoo/assets/samples"


# --- constructed models, methods and data -----------------------------------------------------------

class ProbabilityModel(nn.Module):
    """Two classes; the probability of class 0 is ``p = sum(w * x[:, 0])`` (clamped to (0, 1)): the
    logits ``[log p, log(1 - p)]`` make the softmax return p exactly."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("w", weight)

    def forward(self, x):
        p = (x[:, 0] * self.w).flatten(1).sum(1).clamp(1e-9, 1 - 1e-9)
        return torch.stack([p.log(), (1 - p).log()], 1)


class RegionModel(nn.Module):
    """Class 0's logit is the sum of channel 0 inside ``region`` (minus a constant), class 1's is 0:
    the evidence for class 0 lies exactly in ``region``."""

    def __init__(self, region: torch.Tensor):
        super().__init__()
        self.register_buffer("region", region.float())
        self.scale = nn.Parameter(torch.tensor(0.5))

    def forward(self, x):
        s = self.scale * (x[:, 0] * self.region).flatten(1).sum(1) - 4.0
        return torch.stack([s, torch.zeros_like(s)], 1)


class RegionMethod(Method):
    """The perfect explanation of RegionModel: its region."""

    name = "region"
    uses_layer = False

    def __init__(self, region):
        self.region = region.float()

    def compute(self, ctx):
        n, k = ctx.targets.shape
        return self.region.expand(n, k, *self.region.shape).clone()


class Sobel(Method):
    """An edge detector: the Sobel gradient magnitude of the input; it ignores the model entirely."""

    name = "sobel"
    uses_layer = False

    def compute(self, ctx):
        gray = ctx.inputs.detach().mean(1, keepdim=True)
        kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], device=gray.device)
        gx = F.conv2d(gray, kx[None, None], padding=1)
        gy = F.conv2d(gray, kx.t()[None, None], padding=1)
        mag = (gx ** 2 + gy ** 2).sqrt()
        return mag.expand(-1, ctx.targets.shape[1], -1, -1).clone()


class RegionData:
    """Images of ones (with a little noise) whose `object` and `part` masks are the region."""

    def __init__(self, region, n=8, size=16):
        g = torch.Generator().manual_seed(0)
        self.x = 1 + 0.05 * torch.rand(n, 3, size, size, generator=g)
        self.region = region.numpy().astype(bool)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], 0

    def masks(self, i):
        return {"object": self.region, "part": self.region}


def region_mask(size=16):
    r = torch.zeros(size, size)
    r[5:9, 6:10] = 1
    return r


class SobelPlugin:
    @xviz.hookimpl
    def xviz_register_methods(self):
        return [Sobel()]

    @xviz.hookimpl
    def xviz_register_models(self):
        from xviz_zoo.demo import PREPROCESSING

        from xviz.data.synthetic import CLASSES

        def build(num_classes, **options):
            return nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, num_classes))

        return [ModelSpec("mlp-test", build, PREPROCESSING, CLASSES, summary="no spatial layer")]


@pytest.fixture
def sobel_pm():
    pm = registry.get_plugin_manager(entrypoints=False)
    pm.register(SobelPlugin(), name="sobel-test")
    return pm


# --- deletion / insertion ---------------------------------------------------------------------------

def test_deletion_insertion_auc_by_hand():
    # 2 x 2 image, channel 0 = [.4, .3, .2, .05]; p = sum of the channel; baseline 0; 4 steps of one pixel
    x = torch.zeros(1, 3, 2, 2)
    x[0, 0] = torch.tensor([[0.4, 0.3], [0.2, 0.05]])
    model = ProbabilityModel(torch.ones(2, 2))
    best = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])  # the true order of importance
    curves = perturbation_curves(model, x, torch.zeros_like(x), best, torch.tensor([0]), steps=4)
    torch.testing.assert_close(curves["deletion"][0], torch.tensor([0.95, 0.55, 0.25, 0.05, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(curves["insertion"][0], torch.tensor([0.0, 0.4, 0.7, 0.9, 0.95]), atol=1e-6, rtol=0)
    # trapezoids of width 1/4: deletion (0.75 + 0.4 + 0.15 + 0.025) / 4, insertion (0.2 + 0.55 + 0.8 + 0.925) / 4
    assert auc(curves["deletion"]).item() == pytest.approx(0.33125, abs=1e-6)
    assert auc(curves["insertion"]).item() == pytest.approx(0.61875, abs=1e-6)
    worst = perturbation_curves(model, x, torch.zeros_like(x), -best, torch.tensor([0]), steps=4)
    assert auc(worst["deletion"]).item() == pytest.approx(0.61875, abs=1e-6)
    assert auc(worst["insertion"]).item() == pytest.approx(0.33125, abs=1e-6)


def test_perturbation_batches_do_not_change_the_curves():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 3, 4, 4, generator=g) / 16
    maps = torch.rand(3, 4, 4, generator=g)
    model = ProbabilityModel(torch.ones(4, 4))
    t = torch.zeros(3, dtype=torch.long)
    one = perturbation_curves(model, x, torch.zeros_like(x), maps, t, steps=8, chunk=2)
    many = perturbation_curves(model, x, torch.zeros_like(x), maps, t, steps=8, chunk=1000)
    for kind in ("deletion", "insertion"):
        torch.testing.assert_close(one[kind], many[kind])


def test_pixel_ranks_follow_the_map_and_break_ties_at_random():
    maps = torch.tensor([[[0.1, 0.9], [0.5, 0.3]]])
    assert pixel_ranks(maps).tolist() == [[3, 0, 1, 2]]
    flat = torch.zeros(1, 8, 8)
    a, b = pixel_ranks(flat, seed=0), pixel_ranks(flat, seed=1)
    assert sorted(a[0].tolist()) == list(range(64))
    assert not torch.equal(a, b)  # not the raster order of a stable sort, and seeded
    assert torch.equal(a, pixel_ranks(flat, seed=0))


def test_perfect_explanation_beats_a_random_one(pm):
    region = region_mask()
    results = evaluate(RegionModel(region), [RegionMethod(region)], RegionData(region), metrics=["deletion",
                       "insertion", "drop", "pointing"], steps=16, baseline="zero", pm=pm, progress=False)
    perfect, rand = results["region"].values, results[RANDOM].values
    assert perfect["deletion"] < rand["deletion"] - 0.2
    assert perfect["insertion"] > rand["insertion"] + 0.2
    assert [r.method for r in results.rows] == ["region", RANDOM]  # ranked by insertion - deletion
    assert results.rank_by == "ins_minus_del"
    assert perfect["pointing_object"] == 1.0 and perfect["energy_object"] == pytest.approx(1.0)
    assert rand["energy_object"] == pytest.approx(16 / 256, abs=0.03)  # the region's share of the image
    assert perfect["average_drop"] < rand["average_drop"]
    # the mean curves start at the full image's probability and end at the baseline's
    curve = results["region"].curves["deletion"]
    assert curve[0] == pytest.approx(torch.sigmoid(torch.tensor(0.5 * 16 * 1.025 - 4)).item(), abs=0.02)
    assert curve[-1] == pytest.approx(torch.sigmoid(torch.tensor(-4.0)).item(), abs=1e-4)


# --- average drop, increase, pointing --------------------------------------------------------------

def test_average_drop_and_increase_by_hand():
    full = torch.tensor([0.8, 0.5, 0.4, 0.2])
    masked = torch.tensor([0.4, 0.6, 0.4, 0.05])
    drop, increase = average_drop_increase(full, masked)
    assert drop == pytest.approx(100 * (0.5 + 0 + 0 + 0.75) / 4)
    assert increase == pytest.approx(25.0)


def test_mask_by_map_multiplies_pixels_not_normalised_values():
    mean, std = torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.25, 0.25, 0.25])
    pixels = torch.full((1, 3, 1, 2), 0.8)
    x = (pixels - mean[:, None, None]) / std[:, None, None]
    maps = torch.tensor([[[0.5, -1.0]]])  # the negative part counts as no evidence
    out = mask_by_map(x, maps, -mean / std) * std[:, None, None] + mean[:, None, None]
    torch.testing.assert_close(out[0, :, 0], torch.tensor([[0.4, 0.0]] * 3))


def test_pointing_and_energy_by_hand():
    maps = torch.zeros(3, 4, 4)
    maps[0, 1, 1], maps[0, 3, 3] = 1.0, 0.5  # maximum inside; 2/3 of the energy inside
    maps[1, 3, 3], maps[1, 1, 1] = 1.0, 0.25  # maximum outside; 0.25/1.25 inside
    maps[1, 0, 0] = -5.0  # negative values carry no energy
    regions = torch.zeros(3, 4, 4, dtype=torch.bool)
    regions[:, :2, :2] = True
    assert pointing_game(maps, regions).tolist() == [True, False, False]  # the blank map misses
    torch.testing.assert_close(energy_pointing(maps, regions), torch.tensor([2 / 3, 0.2, 0.0], dtype=torch.float64))


def test_spearman_and_ssim():
    a = np.arange(16, dtype=np.float32).reshape(1, 4, 4) / 15
    assert spearman(a, a)[0] == pytest.approx(1.0)
    assert spearman(a, 1 - a)[0] == pytest.approx(-1.0)
    assert spearman(np.zeros_like(a), np.zeros_like(a))[0] == 1.0
    assert spearman(a, np.zeros_like(a))[0] == 0.0
    assert ssim(a, a)[0] == pytest.approx(1.0)
    assert ssim(a, 1 - a)[0] < 0


def test_boxes_follow_the_resize_and_crop():
    from xviz.evaluation import region_kinds, regions_of
    from xviz.images import Preprocessing

    class Boxes:  # CUB's interface: box(i) = (x, y, width, height) in original pixels, image(i)
        def image(self, i):
            return Image.new("RGB", (80, 40))

        def box(self, i):
            return (0.0, 0.0, 40.0, 40.0)  # the left half

    # 80 x 40 -> resize the short side to 32: 64 x 32 -> center crop 32: original x 20..60 is kept,
    # so the box (x < 40) covers the crop's left half
    mask = regions_of(Boxes(), 0, Preprocessing(32, 32, (0.5,) * 3, (0.25,) * 3), (32, 32))["box"]
    assert region_kinds(Boxes()) == ("box",)
    assert mask.shape == (32, 32) and mask[:, :15].all() and not mask[:, 17:].any()


# --- the sanity check -------------------------------------------------------------------------------

def test_randomized_copy_resets_the_top_layers_only(demo):
    before = {k: v.clone() for k, v in demo.module.state_dict().items()}
    clone, names = randomized_copy(demo.module, 3, seed=0)
    assert names == ["classifier", "features.17", "features.14"]
    for k, v in demo.module.state_dict().items():
        assert torch.equal(v, before[k])  # the original is untouched
    state = clone.state_dict()
    assert not torch.equal(state["classifier.weight"], before["classifier.weight"])
    assert not torch.equal(state["features.14.weight"], before["features.14.weight"])
    assert torch.equal(state["features.10.weight"], before["features.10.weight"])
    again, _ = randomized_copy(demo.module, 3, seed=0)
    assert torch.equal(again.state_dict()["classifier.weight"], state["classifier.weight"])


def test_sanity_check_flags_an_edge_detector_not_gradcam(demo, sobel_pm):
    from xviz.datasets import load_dataset

    data, _ = load_dataset("synthetic", "test", pm=sobel_pm, transform=demo.preprocessing.tensor)
    results = evaluate(demo, ["gradcam", "sobel"], data, metrics=["sanity"], limit=12, pm=sobel_pm,
                       progress=False)
    assert results["sobel"].flagged and results["sobel"].values["sanity_spearman"] > 0.99
    assert results[RANDOM].flagged
    assert not results["gradcam"].flagged
    assert results["gradcam"].values["sanity_spearman"] < 0.5
    assert results["gradcam"].values["sanity_ssim"] < results["sobel"].values["sanity_ssim"]
    assert results.rank_by == "sanity_spearman" and results.rows[0].method == "gradcam"


# --- the command ------------------------------------------------------------------------------------

@pytest.fixture
def cli(run_cli, sobel_pm, monkeypatch):
    """`xviz ...` in-process with the built-ins plus the Sobel method and the `mlp-test` model."""
    monkeypatch.setattr(registry, "get_plugin_manager", lambda **kw: sobel_pm)
    return run_cli


def test_cli_end_to_end_on_the_demo_model(cli, tmp_path):
    code, out, err = cli("evaluate", "--model", "xviz-demo", "--data", "synthetic", "--limit", 12,
                         "--method", "gradcam,gradcampp", "--steps", 10, "--out", tmp_path)
    assert code == 0, err
    assert "ranked by ins-del" in out and "randomised: classifier, features.17, features.14" in out
    with open(tmp_path / "evaluate_results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["method"] for r in rows} == {"gradcam", "gradcampp", RANDOM}
    assert [int(r["rank"]) for r in rows] == [1, 2, 3]
    gains = [float(r["ins_minus_del"]) for r in rows]
    assert gains == sorted(gains, reverse=True)
    for r in rows:
        assert r["images"] == "12"
        for col in ("deletion", "insertion", "average_drop", "increase", "pointing_object", "energy_object",
                    "pointing_part", "energy_part", "sanity_spearman", "sanity_ssim"):
            assert math.isfinite(float(r[col]))
    assert next(r for r in rows if r["method"] == RANDOM)["sanity_flagged"] == "1"
    assert next(r for r in rows if r["method"] == "gradcam")["sanity_flagged"] == "0"
    for name in ("evaluate_ranking.png", "evaluate_curves.png", "evaluate_sanity.png"):
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and im.width > 400 and im.height > 200
            assert len(np.unique(np.asarray(im.convert("L")))) > 20  # a drawn chart, not a blank canvas
    assert "evaluating" in err  # the progress bar


def _one_line_error(code, out, err):
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xviz: error: ")
    return lines[0]


def test_cli_method_that_does_not_apply(cli, tmp_path):
    line = _one_line_error(*cli("evaluate", "--model", "mlp-test", "--weights", "none", "--method", "gradcam",
                                "--data", "synthetic", "--limit", 2, "--out", tmp_path))
    assert "`gradcam` does not apply" in line and "methods that apply:" in line
    applying = line.split("methods that apply:")[1]
    assert "sobel" in applying and "gradcam" not in applying


def test_cli_pointing_game_without_masks(cli, tmp_path):
    line = _one_line_error(*cli("evaluate", "--model", "xviz-demo", "--data", SAMPLES, "--metrics", "pointing",
                                "--out", tmp_path))
    assert "`pointing`" in line and "metrics that apply: deletion, insertion, drop, sanity" in line


@pytest.mark.parametrize("args, expected", [
    (("--data", "nosuchdata"), "unknown dataset `nosuchdata`"),
    (("--data", "synthetic", "--method", "gradcma"), "unknown method `gradcma`: did you mean `gradcam`"),
    (("--data", "synthetic", "--metrics", "deletion,ssim"), "unknown metric `ssim`"),
    (("--data", "synthetic", "--rank-by", "speed"), "unknown column `speed`"),
])
def test_cli_bad_names(cli, tmp_path, args, expected):
    line = _one_line_error(*cli("evaluate", "--model", "xviz-demo", *args, "--out", tmp_path))
    assert expected in line


def test_default_methods_are_those_that_apply(demo, sobel_pm):
    from xviz.evaluation import applicable_methods

    example = torch.zeros(1, 3, 64, 64)
    ok, why = applicable_methods(demo, example, pm=sobel_pm)
    assert {"gradcam", "gradcampp", "sobel"} <= {m.name for m in ok}
    assert "attention" in why and "attention" not in {m.name for m in ok}
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, 6))
    ok, why = applicable_methods(mlp, example, pm=sobel_pm)
    assert "sobel" in {m.name for m in ok} and "gradcam" in why and "spatial" in why["gradcam"]


def test_api_errors(demo, pm):
    data = RegionData(region_mask())
    with pytest.raises(XvizError, match="metrics that apply: deletion, insertion, drop, sanity"):
        evaluate(demo, ["gradcam"], [(torch.zeros(3, 64, 64), 0)], metrics=["pointing"], pm=pm, progress=False)
    with pytest.raises(XvizError, match="at least 2"):
        evaluate(demo, ["gradcam"], data, steps=1, pm=pm, progress=False)
