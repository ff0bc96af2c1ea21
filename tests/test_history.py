"""xviz.train.history: JSON/CSV files, reading runs, files and checkpoints, the comparison figure."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from xviz.checkpoint import save_checkpoint
from xviz.errors import XvizError
from xviz.images import Preprocessing
from xviz.train.history import _series, plot_history, read_history, write_history


def make_history(epochs=5, start_acc=0.3, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for epoch in range(1, epochs + 1):
        rows.append({"epoch": epoch,
                     "train_loss": float(2.0 / epoch + rng.uniform(0, 0.1)),
                     "train_acc": float(min(1.0, start_acc + 0.1 * epoch + rng.uniform(0, 0.02))),
                     "test_loss": float(2.2 / epoch + rng.uniform(0, 0.1)),
                     "test_acc": float(min(1.0, start_acc + 0.09 * epoch)),
                     "lr": 0.1 / 3 ** (epoch // 2),
                     "seconds": round(float(rng.uniform(1, 9)), 3)})
    return rows


PRE = Preprocessing(resize=None, crop=None, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


# --- files ---------------------------------------------------------------------------------------

def test_json_and_csv_round_trip(tmp_path):
    history = make_history()
    history[2]["frozen"] = "backbone"  # a key that only some rows have
    history[0]["lr"] = 0.1 + 0.2  # floats that need every digit
    history[1]["train_loss"] = 1 / 3
    json_path, csv_path = write_history(tmp_path / "run", history)
    assert json_path == tmp_path / "run" / "history.json" and csv_path == tmp_path / "run" / "history.csv"

    assert json.loads(json_path.read_text()) == history
    header = csv_path.read_text().splitlines()[0]
    assert header == "epoch,train_loss,train_acc,test_loss,test_acc,lr,seconds,frozen"  # union, first-seen order
    assert len(csv_path.read_text().splitlines()) == len(history) + 1

    assert read_history(json_path) == history
    from_csv = read_history(csv_path)
    assert from_csv == history  # same values, ints stay ints, missing cells stay missing
    assert isinstance(from_csv[0]["epoch"], int) and "frozen" not in from_csv[0]
    assert read_history(tmp_path / "run") == history  # a run folder: its history.json
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["history.csv", "history.json"]


def test_write_history_overwrites_and_accepts_numpy_scalars(tmp_path):
    write_history(tmp_path, make_history(5))
    rows = [{"epoch": np.int64(1), "train_loss": np.float32(0.5), "test_acc": torch.tensor(0.75)}]
    write_history(tmp_path, rows)
    assert read_history(tmp_path / "history.json") == [{"epoch": 1, "train_loss": 0.5, "test_acc": 0.75}]
    assert read_history(tmp_path / "history.csv") == [{"epoch": 1, "train_loss": 0.5, "test_acc": 0.75}]


def test_run_folder_falls_back_to_csv_then_checkpoint(tmp_path):
    history = make_history(3)
    write_history(tmp_path / "a", history)
    (tmp_path / "a" / "history.json").unlink()
    assert read_history(tmp_path / "a") == history
    save_checkpoint(tmp_path / "b" / "last.pt", arch="tiny", state_dict={"w": torch.ones(2)}, class_names=["x", "y"],
                    preprocessing=PRE, history=history)
    assert read_history(tmp_path / "b") == history


def test_history_from_a_checkpoint(tmp_path):
    history = make_history(4)
    ckpt = save_checkpoint(tmp_path / "model.pt", arch="tiny", state_dict={"w": torch.zeros(3)},
                           class_names=["a", "b"], preprocessing=PRE, history=history, config={"epochs": 4})
    assert read_history(ckpt) == history


def test_missing_and_unreadable_sources_are_one_line_errors(tmp_path):
    missing = tmp_path / "nope" / "history.json"
    with pytest.raises(XvizError) as err:
        read_history(missing)
    assert str(missing) in str(err.value) and "\n" not in str(err.value)

    with pytest.raises(XvizError, match="holds no history"):
        read_history(tmp_path)  # a folder without any history
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(XvizError, match="bad.json") as err:
        read_history(bad)
    assert "\n" not in str(err.value)
    (tmp_path / "dict.json").write_text('{"a": 1}')
    with pytest.raises(XvizError, match="does not hold a history"):
        read_history(tmp_path / "dict.json")
    (tmp_path / "broken.pt").write_bytes(b"not a zip")
    with pytest.raises(XvizError, match="broken.pt"):
        read_history(tmp_path / "broken.pt")
    torch.save({"w": torch.ones(1)}, tmp_path / "bare.pt")  # a bare state dict: no history
    with pytest.raises(XvizError, match="no training history"):
        read_history(tmp_path / "bare.pt")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(XvizError, match="not a history file"):
        read_history(tmp_path / "notes.txt")


# --- the figure ----------------------------------------------------------------------------------

def test_accuracies_are_drawn_in_percent():
    xs, ys = _series([{"epoch": 1, "test_acc": 0.5}, {"epoch": 2, "test_acc": 0.75}], "test_acc", True)
    assert xs == [1, 2] and ys == [50.0, 75.0]
    # already percent (e.g. a CSV from another tool): left alone
    assert _series([{"epoch": 1, "test_acc": 50.0}], "test_acc", True)[1] == [50.0]
    # losses untouched, rows without the key (or with NaN) skipped, epoch defaults to the position
    assert _series([{"train_loss": 0.5}, {}, {"train_loss": float("nan")}, {"train_loss": 0.25}],
                   "train_loss", False) == ([1, 4], [0.5, 0.25])


def test_plot_history_is_a_real_png(tmp_path):
    runs = {"flip + crop": make_history(12, 0.3, seed=1), "cutout": make_history(9, 0.2, seed=2)}
    for row in runs["cutout"]:
        del row["test_loss"]  # a run without a key is skipped in that panel
    out = plot_history(runs, tmp_path / "figs" / "attempts.png", title="CIFAR-10 ResNet-18 attempts")
    assert out == tmp_path / "figs" / "attempts.png"
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width >= 800 and img.height >= 600
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 10
    assert [p.name for p in out.parent.iterdir()] == ["attempts.png"]


def test_plot_history_of_a_run_without_test_metrics(tmp_path):
    rows = [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5 + 0.05 * e} for e in range(1, 4)]
    out = plot_history({"only train": rows}, tmp_path / "h.png")
    with Image.open(out) as img:
        assert img.format == "PNG"


def test_plot_history_needs_a_run(tmp_path):
    with pytest.raises(XvizError, match="no runs"):
        plot_history({}, tmp_path / "h.png")
