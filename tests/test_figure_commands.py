"""The commands that draw the documents' figures: model-diagram, augment-preview, lr-sweep,
plot-history --panels, lr-find --schedule-plot, misclassified with a map per layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from xviz.testing import run_xviz

SAMPLE = "plugins/xviz_zoo/assets/samples/winged.png"


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


# --- model-diagram ------------------------------------------------------------------------------

class TwoBranches(nn.Module):
    """A user's own model: a skip connection through a concatenation, functions between modules."""

    def __init__(self):
        super().__init__()
        self.stem, self.body = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        a = self.stem(x)
        b = self.body(torch.relu(a))
        return self.head(torch.cat([a, b], dim=1).mean(dim=(2, 3)).flatten(1))


def test_the_diagram_follows_every_tensor_of_a_users_model():
    from xviz.diagram import trace

    nodes = trace(TwoBranches(), torch.zeros(1, 3, 8, 8))
    names = [n.name for n in nodes]
    assert names == ["input", "stem", "relu", "body", "cat", "mean", "head"]  # flatten passes through
    inputs = {n.name: [names[i] for i in n.inputs] for n in nodes}
    assert inputs == {"input": [], "stem": ["input"], "relu": ["stem"], "body": ["relu"], "cat": ["stem", "body"],
                      "mean": ["cat"], "head": ["mean"]}
    assert nodes[names.index("cat")].shape == (8, 8, 8) and nodes[-1].shape == (2,)


def test_the_attention_vgg_diagram_has_its_three_attention_blocks():
    """Each attention block reads its local feature (l1 through the projector) and the global g."""
    from xviz.diagram import layout, trace
    from xviz_attention.models import AttnVGG

    nodes = trace(AttnVGG(num_classes=10, width=0.0625), torch.zeros(1, 3, 32, 32))
    names = [n.name for n in nodes]
    reads = {n.name: {names[i] for i in n.inputs} for n in nodes}
    assert reads["attn1"] == {"projector", "dense"} and reads["projector"] == {"cb3"}
    assert reads["attn2"] == {"cb4", "dense"} and reads["attn3"] == {"cb5", "dense"}
    assert reads["classify"] == {"cat"} and reads["cat"] == {"attn1", "attn2", "attn3"}
    rows = dict(zip(names, (r for r, _ in layout(nodes))))
    assert rows["attn1"] == rows["attn2"] == rows["attn3"] == rows["dense"] + 1


def test_model_diagram_writes_a_png_and_refuses_bad_input(tmp_path):
    result = run_xviz("model-diagram", "--model", "attn_vgg", "--weights", "none", "--out", tmp_path / "a.png")
    assert result.code == 0, result.err
    assert "wrote" in result.out and png_size(tmp_path / "a.png")[0] > 600
    for args, words in ((["--out", tmp_path / "a.jpg"], "must name a .png"),
                        (["--depth", "0", "--out", tmp_path / "b.png"], "at least 1")):
        bad = run_xviz("model-diagram", "--model", "xviz-demo", "--weights", "none", *args)
        assert bad.code == 2 and words in bad.err and len(bad.err.strip().splitlines()) == 1
    assert not (tmp_path / "b.png").exists()


# --- augment-preview ----------------------------------------------------------------------------

def _cfg(**values):
    from xviz.train.config import TrainConfig

    return TrainConfig(**values).validate()


def test_augment_preview_rows_are_what_each_transform_does():
    from xviz.commands.augment_preview import preview_rows
    from xviz.images import read_image

    rows = preview_rows(read_image(SAMPLE), _cfg(augment=["flip", "cutout"], cutout=12), ["flip", "cutout"], 6)
    assert [title for title, _ in rows] == ["flip", "cutout", "pipeline: flip + cutout"]
    (_, flips), (_, cutouts), _ = rows
    original = flips[0]
    for picture in flips[1:]:  # a flip is the image or its mirror, nothing else
        assert np.allclose(picture, original) or np.allclose(picture, original[:, ::-1])
    assert any(np.allclose(p, original[:, ::-1]) for p in flips[1:])
    for picture in cutouts[1:]:  # a cutout zeroes one square at most 12 px wide and changes nothing else
        changed = np.argwhere(np.abs(picture - original).sum(axis=2) > 1e-6)
        assert len(changed) and (picture[tuple(changed.T)] == 0).all()
        assert (changed.max(0) - changed.min(0) < 12).all()


def test_augment_preview_cli_writes_the_grid_and_says_what_is_wrong(tmp_path):
    result = run_xviz("augment-preview", SAMPLE, "--recipe", "cifar10-resnet18-cutout", "--dataset", "synthetic",
                      "--samples", "3", "--out", tmp_path / "p.png")
    assert result.code == 0, result.err
    assert "7 rows of 3 samples" in result.out and png_size(tmp_path / "p.png")[0] > 400
    for args, words in (([SAMPLE, "--transforms", "blur"], "unknown augmentation `blur`"),
                        (["missing.png"], "does not exist"),
                        ([SAMPLE, "--samples", "0"], "at least 1")):
        bad = run_xviz("augment-preview", *args, "--out", tmp_path / "q.png")
        assert bad.code == 2 and words in bad.err and len(bad.err.strip().splitlines()) == 1
    assert not (tmp_path / "q.png").exists()


# --- lr-sweep -----------------------------------------------------------------------------------

def test_every_rate_of_the_sweep_starts_from_the_same_weights_and_batch():
    from xviz.train.lr_sweep import lr_sweep

    cfg = _cfg(model="xviz-demo", dataset_options={"size": 24}, batch_size=8, augment=[])
    runs = lr_sweep(cfg, [1e-4, 0.1], steps=3, progress=False)
    assert [r.lr for r in runs] == [1e-4, 0.1] and all(len(r.losses) == 3 for r in runs)
    assert runs[0].losses[0] == pytest.approx(runs[1].losses[0], rel=1e-6)  # same start: only the rate differs
    assert runs[0].losses[1] != pytest.approx(runs[1].losses[1], rel=1e-6)


def test_smoothed_is_the_debiased_moving_average():
    from xviz.train.lr_sweep import smoothed

    s = smoothed([2.0, 4.0], smooth=0.5)
    assert s[0] == pytest.approx(2.0) and s[1] == pytest.approx((0.25 * 2 + 0.5 * 4) / 0.75)


def test_lr_sweep_cli(tmp_path):
    args = ["lr-sweep", "--model", "xviz-demo", "--dataset-options", "size=16", "--batch-size", "8", "--steps", "2"]
    result = run_xviz(*args, "--lrs", "0.001,0.1", "--labels", "small,large", "--out", tmp_path / "s.png")
    assert result.code == 0, result.err
    assert "lr 0.001: 2 steps" in result.out and png_size(tmp_path / "s.png")[0] > 400
    for extra, words in ((["--lrs", "a,b"], "comma-separated numbers"), (["--lrs", "0.1,-1"], "positive"),
                         (["--lrs", "0.1", "--labels", "a,b"], "one label per rate")):
        bad = run_xviz(*args, *extra, "--out", tmp_path / "t.png")
        assert bad.code == 2 and words in bad.err and len(bad.err.strip().splitlines()) == 1
    assert not (tmp_path / "t.png").exists()


# --- plot-history --panels, lr-find --schedule-plot --------------------------------------------

def test_plot_history_three_panels_and_the_legend_in_the_fourth_cell(tmp_path):
    from xviz.train.history import write_history

    write_history(tmp_path / "run", [{"epoch": e, "train_acc": 0.5, "train_loss": 1.0, "test_acc": 0.4 + e / 10}
                                     for e in (1, 2)])
    result = run_xviz("plot-history", tmp_path / "run", "--panels", "train_acc,train_loss,test_acc",
                      "--out", tmp_path / "h.png")
    assert result.code == 0, result.err and png_size(tmp_path / "h.png")[0] > 600
    bad = run_xviz("plot-history", tmp_path / "run", "--panels", "train_acc,val_acc", "--out", tmp_path / "x.png")
    assert bad.code == 2 and "unknown panel `val_acc`" in bad.err


def test_lr_find_draws_the_rate_against_the_iteration(tmp_path):
    result = run_xviz("lr-find", "--model", "xviz-demo", "--dataset-options", "size=16", "--batch-size", "8",
                      "--iterations", "6", "--plot", tmp_path / "lr.png", "--schedule-plot", tmp_path / "it.png")
    assert result.code == 0, result.err
    assert png_size(tmp_path / "lr.png") and png_size(tmp_path / "it.png")


# --- misclassified with a map per attention layer -----------------------------------------------

def test_misclassified_draws_each_attention_layer(tmp_path):
    from xviz.train import train

    cfg = _cfg(model="attn_vgg", model_options={"width": 0.0625, "input_size": 64}, dataset_options={"size": 12},
               epochs=1, batch_size=12, out=str(tmp_path / "run"))
    train(cfg, log=lambda *a: None)
    result = run_xviz("misclassified", "--checkpoint", tmp_path / "run", "--dataset-options", "size=12",
                      "--method", "attention", "--count", "2", "--out", tmp_path / "m.png")
    assert result.code == 0, result.err
    assert "attention of 3 layers" in result.out or "every image is classified correctly" in result.out


def test_every_core_command_is_documented_in_the_cli_page():
    """Registry-driven: each command of a built-in command module (xviz/commands/) has its line in docs/cli.md."""
    from pathlib import Path

    from xviz.commands import build_parser
    from xviz.registry import BUILTIN_COMMANDS, get_plugin_manager

    pm = get_plugin_manager(builtins=False, entrypoints=False)
    for module in BUILTIN_COMMANDS:
        pm.register_plugin(__import__(module, fromlist=["_"]), module, "built-in", "?")
    parser = build_parser(pm)
    names = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict)).choices
    assert {"explain", "model-diagram", "augment-preview", "lr-sweep"} <= set(names)
    cli = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()
    undocumented = [name for name in names if f"`xviz {name}" not in cli]
    assert not undocumented, f"commands missing from docs/cli.md: {undocumented}"
