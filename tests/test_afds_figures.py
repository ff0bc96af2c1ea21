"""The AFDS document's figures: the gate diagram read from the modules, the accuracy / MACs table
across runs, the sweep over the keep ratio and the mask threshold, and the dataset mosaics."""

import csv
import json

import pytest
from PIL import Image

from xviz_afs.gates import add_gates, gates
from xviz_afs.sparse import estimate_macs


@pytest.fixture(scope="module")
def gated_run(tmp_path_factory):
    """A small synthetic run of afs_resnet18 (d = 0.5; 12 images, 32 px, 1 epoch)."""
    from xviz.cli import main

    out = tmp_path_factory.mktemp("afs") / "run-afd"
    code = main(["train", "--model", "afs_resnet18", "--model-options", "ratio=0.5", "--dataset", "synthetic",
                 "--dataset-options", "size=12", "--image-size", "32", "--epochs", "1", "--batch-size", "6",
                 "--lr", "0.005", "--reg", "afd", "--out", str(out)])
    assert code == 0
    return out


def _rows(path):
    return list(csv.DictReader(path.read_text().splitlines()))


def test_the_gate_diagram_reads_its_labels_from_the_network():
    from torchvision.models import resnet18

    from xviz_afs.figures import gate_figure, gate_parts

    model = add_gates(resnet18(num_classes=3), 0.25)
    gates(model)["layer2.0.conv2"].m[:10] = 0
    gates(model)["layer2.0.conv2"].s[:3] = 0
    parts = gate_parts(model, "layer2.0.conv2")
    assert (parts["channels"], parts["k"], parts["kept"], parts["dynamic"]) == (128, 32, 118, 125)
    assert parts["bn_name"] == "layer2.0.bn2" and parts["conv"] is model.layer2[0].conv2
    fig = gate_figure(parts)
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    for label in ("Conv2d 128→128", "BatchNorm2d(128)", "Linear 128→128", "keeps the 32 largest", "of 128 (d = 0.25)",
                  "m: 118/128 kept", "s: 125/128 dynamic"):
        assert label in texts, label


def test_afs_diagram_writes_the_picture_and_refuses_an_ungated_layer(run_cli, tmp_path):
    code, out, err = run_cli("afs-diagram", "--ratio", "0.5", "--out", tmp_path / "gate.png")
    assert code == 0, err
    with Image.open(tmp_path / "gate.png") as im:
        assert im.format == "PNG" and 600 <= im.width <= 900  # legible at a page's width
    code, _, err = run_cli("afs-diagram", "--layer", "conv1", "--out", tmp_path / "x.png")
    assert code == 2 and "`conv1` is not a gated layer" in err


def test_afs_compare_tabulates_the_runs_accuracy_and_macs(gated_run, run_cli, tmp_path):
    from xviz.models import load_model

    code, out, err = run_cli("afs-compare", gated_run, "--thres-m", "1e9", "--out", tmp_path)
    assert code == 0, err
    [row] = _rows(tmp_path / "afs_compare.csv")
    history = json.loads((gated_run / "history.json").read_text())
    assert row["run"] == "run-afd" and row["reg"] == "afd"
    assert float(row["test_acc"]) == pytest.approx(100 * history[-1]["test_acc"], abs=1e-3)
    model = load_model(checkpoint=gated_run).module
    # before the update, winner-take-all keeps exactly half of each layer's channels on every image
    expected = estimate_macs(model, 32, {n: 0.5 for n in gates(model)})
    assert float(row["mmacs"]) == pytest.approx(expected.gated / 1e6, abs=1e-3)
    assert float(row["dense_mmacs"]) == pytest.approx(expected.dense / 1e6, abs=1e-3)
    # a threshold no channel reaches masks every gated conv: far fewer MACs, and still a percentage
    assert float(row["masked_mmacs"]) < 0.5 * float(row["mmacs"])
    assert 0 <= float(row["masked_test_acc"]) <= 100
    with Image.open(tmp_path / "afs_compare.png") as im:
        assert im.format == "PNG"


def test_afs_sweep_macs_grow_with_the_keep_ratio(gated_run, run_cli, tmp_path):
    code, out, err = run_cli("afs-sweep", "--checkpoint", gated_run, "--ratios", "0.25,0.5,1", "--thres-m", "0,1e9",
                             "--out", tmp_path)
    assert code == 0, err
    rows = _rows(tmp_path / "sweep.csv")
    ratios = [r for r in rows if r["swept"] == "ratio"]
    assert [r["value"] for r in ratios] == ["0.25", "0.5", "1"]
    macs = [float(r["macs"]) for r in ratios]
    assert macs[0] < macs[1] < macs[2]
    thresholds = {r["value"]: float(r["macs"]) for r in rows if r["swept"] == "thres_m"}
    assert thresholds["1e+09"] < thresholds["0"] <= macs[1] + 1  # masking everything costs least
    assert all(0 <= float(r["test_acc"]) <= 1 for r in rows)
    code, _, err = run_cli("afs-sweep", "--checkpoint", gated_run, "--ratios", "0.5,x", "--out", tmp_path)
    assert code == 2 and "`--ratios 0.5,x` is not a comma-separated list of numbers" in err


def test_datasets_mosaic_draws_what_it_can_and_names_what_needs_files(run_cli, tmp_path):
    code, out, err = run_cli("datasets", "--mosaic", tmp_path, "--dataset", "synthetic,cub200", "--data", tmp_path / "none",
                             "--count", "6")
    assert code == 0, err
    assert "not drawn: cub200:" in out and "mosaic_synthetic.png" in out
    with Image.open(tmp_path / "mosaic_synthetic.png") as im:
        assert im.format == "PNG" and im.width <= 1100
    code, _, err = run_cli("datasets", "--mosaic", tmp_path / "b", "--dataset", "cub200", "--data", tmp_path / "none")
    assert code == 2 and "no dataset could be drawn: cub200:" in err


def test_the_mosaic_titles_are_the_images_classes():
    from xviz.commands.listing import dataset_mosaic
    from xviz.data.synthetic import CLASSES

    fig = dataset_mosaic("synthetic", "test", None, 8, None)
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert len(titles) == 8 and set(titles) <= set(CLASSES)


def test_afs_compare_measures_a_masked_checkpoint_with_its_own_masks(gated_run, run_cli, tmp_path):
    masked = tmp_path / "masked.pt"
    code, _, err = run_cli("afs-update", "--checkpoint", gated_run, "--thres-m", "1e9", "--out", masked)
    assert code == 0, err
    # the thresholds given to afs-compare are not used: the checkpoint's masks (all 0) are
    code, _, err = run_cli("afs-compare", masked, "--thres-m", "0", "--out", tmp_path / "c")
    assert code == 0, err
    [row] = _rows(tmp_path / "c" / "afs_compare.csv")
    assert row["run"] == f"{tmp_path.name}/masked.pt"
    assert float(row["masked_mmacs"]) < 0.5 * float(row["mmacs"])
