"""Your own images: the imagefolder and flowers102 datasets, training any model source on them, the
run's split seen again by evaluate/misclassified, the help of every training flag."""

import argparse
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from xviz.checkpoint import read_checkpoint
from xviz.commands import build_parser
from xviz.datasets import run_dataset
from xviz.errors import XvizError
from xviz.models import load_checkpoint
from xviz.train import TrainConfig, make_config, train
from xviz.train.config import GROUPS

COLOURS = {"blue": (40, 40, 200), "green": (40, 200, 40), "red": (200, 40, 40)}
MODEL_FILE = '''
import torch
from torch import nn

def tiny_cnn(width=8):
    """A 10-class CNN: xviz resizes its head for the folder's classes."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))
'''


def write_images(folder, counts, seed=0, side=16):
    """``counts[c]`` noisy images of colour ``c`` in ``folder/c``, alternately JPEG and PNG."""
    rng = np.random.default_rng(seed)
    for name, count in counts.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = np.clip(rng.normal(COLOURS[name], 40, (side, side, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{seed}_{i}.{'jpg' if i % 2 else 'png'}")


@pytest.fixture
def folder(tmp_path):
    """Three colour classes (blue under-represented), a damaged JPEG, a truncated one, a text file."""
    root = tmp_path / "images"
    write_images(root, {"blue": 10, "green": 24, "red": 24})
    (root / "red" / "damaged.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    noise = np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "green" / "truncated.jpg")
    whole = (root / "green" / "truncated.jpg").read_bytes()
    (root / "green" / "truncated.jpg").write_bytes(whole[:len(whole) // 2])  # header fine, pixels cut
    (root / "green" / "notes.txt").write_text("not an image: ignored")
    (root / ".hidden.jpg").write_bytes(b"ignored")
    return root


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "my_model.py"
    path.write_text(MODEL_FILE)
    return path


def config(tmp_path, root, model, **overrides):
    values = dict(model=str(model), dataset="imagefolder", data=str(root), image_size=16, epochs=4, batch_size=8,
                  lr=0.05, scheduler="none", augment=["flip"], out=str(tmp_path / "run"), seed=0)
    return TrainConfig(**{**values, **overrides}).validate()


def test_every_training_flag_has_help_in_its_group(pm):
    """Walk the parsers of train and lr-find: every flag has help; the config's flags sit in the groups."""
    sub = next(a for a in build_parser(pm)._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("train", "lr-find", "plot-history"):
        parser = sub.choices[command]
        bare = [a.option_strings or a.dest for a in parser._actions if not a.help or a.help == argparse.SUPPRESS]
        assert not bare, f"`xviz {command}` flags without help: {bare}"
    titles = [g.title for g in sub.choices["train"]._action_groups]
    assert [t for t in titles if t in GROUPS] == list(GROUPS)
    text = sub.choices["train"].format_help()
    assert "--nesterov" in text and "SGD with Nesterov momentum (default: false)" in " ".join(text.split())


def test_train_on_an_image_folder(tmp_path, folder, model_file):
    """A user's 10-class model from a file, trained on a folder with a damaged, a truncated and a non-image
    file: the head is resized to 3, the damaged files are listed and skipped, accuracy is measured."""
    lines = []
    result = train(config(tmp_path, folder, f"{model_file}:tiny_cnn", workers=1), log=lines.append)  # decoded in a worker
    run = tmp_path / "run"
    text = "\n".join(lines)
    assert "train: 47 images in 3 classes (blue 8, green 20, red 19); imbalance 2.5x" in text
    assert "skipped 1 of 60 image files that cannot be read" in text  # the damaged one; the .txt is ignored
    assert "1 image could not be decoded and was left out of its batch" in text  # the truncated one
    skipped = (run / "skipped_images.txt").read_text().splitlines()
    assert skipped[0].startswith(str(folder / "red" / "damaged.jpg")) and str(folder / "green" / "truncated.jpg") \
        in "\n".join(skipped[1:])
    assert result.best_acc >= 0.9  # colour is the class: easy, measured on the held-out 12 images
    data = read_checkpoint(run / "best.pt")
    assert data["class_names"] == ["blue", "green", "red"] and data["state_dict"]["5.weight"].shape == (3, 8)
    split = json.loads((run / "split.json").read_text())
    assert split["layout"] == "split" and len(split["test"]) == 12 and split["classes"] == ["blue", "green", "red"]


def test_the_run_split_comes_back_for_evaluation(tmp_path, folder, model_file, run_cli):
    train(config(tmp_path, folder, f"{model_file}:tiny_cnn", epochs=1), log=lambda *a: None)
    write_images(folder, {"blue": 5, "green": 5, "red": 5}, seed=7)  # images added after training
    model = load_checkpoint(tmp_path / "run")
    assert model.class_names == ["blue", "green", "red"]
    data, name = run_dataset(model, folder, "test")
    recorded = json.loads((tmp_path / "run" / "split.json").read_text())["test"]
    assert name == "imagefolder" and sorted(p.relative_to(folder).as_posix() for p in map(
        __import__("pathlib").Path, (s for s, _ in data.samples))) == recorded
    from xviz.train.loop import build_data

    cfg = TrainConfig(**read_checkpoint(tmp_path / "run")["config"])  # what --resume rebuilds
    _, test_set, *_ = build_data(cfg, None, tmp_path / "run")
    assert sorted(s for s, _ in test_set.samples) == sorted(s for s, _ in data.samples)
    code, out, _ = run_cli("misclassified", "--checkpoint", tmp_path / "run", "--data", folder, "--count", "2",
                           "--method", "gradcam", "--out", tmp_path / "mis.png", "--device", "cpu")
    assert code == 0 and f"of {len(recorded)} test images misclassified" in out


def test_train_and_val_folders(tmp_path, model_file):
    root = tmp_path / "data"
    write_images(root / "train", {"blue": 6, "red": 6})
    write_images(root / "val", {"blue": 3, "red": 2}, seed=1)
    result = train(config(tmp_path, root, f"{model_file}:tiny_cnn", epochs=1), log=lambda *a: None)
    assert len(result.history) == 1
    assert json.loads((tmp_path / "run" / "split.json").read_text())["test"] == "val"
    write_images(root / "val", {"green": 2}, seed=2)
    with pytest.raises(XvizError, match=r"has classes that .* lacks \(`green`\)"):
        train(config(tmp_path, root, f"{model_file}:tiny_cnn", out=str(tmp_path / "run2")), log=lambda *a: None)


def _bad_roots(tmp_path):
    (tmp_path / "file.jpg").write_bytes(b"x")
    (tmp_path / "flat").mkdir()
    write_images(tmp_path / "flat", {"red": 1}) if False else Image.new("RGB", (9, 9)).save(tmp_path / "flat" / "a.png")
    write_images(tmp_path / "empty_class", {"red": 3})
    (tmp_path / "empty_class" / "blue").mkdir()
    write_images(tmp_path / "lonely", {"red": 3, "blue": 1})
    write_images(tmp_path / "unreadable", {"red": 3})
    (tmp_path / "unreadable" / "blue").mkdir()
    for i in range(2):
        (tmp_path / "unreadable" / "blue" / f"{i}.jpg").write_bytes(b"not a jpeg")


@pytest.mark.parametrize("root, options, message", [
    ("missing", "", r"folder `.*missing` does not exist: check --data"),
    ("file.jpg", "", r"`.*file.jpg` is a file, not a folder"),
    ("flat", "", r"holds no class subfolders: put each class's images in a folder named after it"),
    ("empty_class", "", r"class folder `.*blue` holds no images"),
    ("lonely", "", r"class `blue` has 1 image; a class needs at least two"),
    ("unreadable", "", r"no image of class `blue` can be read \(all \d+ are damaged or not images\)"),
    ("lonely", "val_fraction=1.5", r"val_fraction must be a number between 0 and 1"),
])
def test_bad_folders_are_one_line_each(tmp_path, run_cli, root, options, message):
    _bad_roots(tmp_path)
    args = ["train", "--dataset", "imagefolder", "--data", tmp_path / root, "--out", tmp_path / "run"]
    code, out, err = run_cli(*args, *(["--dataset-options", options] if options else []))
    assert code == 2 and "Traceback" not in err
    line = err.strip().splitlines()
    assert len(line) == 1 and __import__("re").search(message, line[0]), err


def test_lr_find_on_a_folder(run_cli, tmp_path, folder, model_file):
    code, out, err = run_cli("lr-find", "--dataset", "imagefolder", "--data", folder, "--model",
                             f"{model_file}:tiny_cnn", "--image-size", "16", "--batch-size", "8", "--iterations", "12",
                             "--plot", tmp_path / "lr.png")
    assert code == 0 and "suggested learning rate" in out and (tmp_path / "lr.png").stat().st_size > 1000


def test_imagefolder_needs_data(run_cli, tmp_path):
    code, _, err = run_cli("train", "--dataset", "imagefolder", "--out", tmp_path / "run")
    assert code == 2 and "needs --data ROOT" in err


def test_preprocessing_follows_the_model(tmp_path, folder):
    """No statistics of its own: a torchvision model's folder is normalised with ImageNet's."""
    from xviz.train.loop import build_data

    cfg = TrainConfig(model="resnet18", dataset="imagefolder", data=str(folder)).validate()
    *_, pre = build_data(cfg, None)
    assert pre.mean == pytest.approx((0.485, 0.456, 0.406)) and pre.crop == 224


def test_torchvision_and_state_dict_weights(tmp_path, folder):
    """Any torchvision classifier by name (resolved, not registered); --weights a wrapped state dict."""
    import torchvision

    source = torchvision.models.get_model("mobilenet_v3_small", num_classes=1000)
    wrapped = tmp_path / "weights.pth"
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}}, wrapped)
    lines = []
    train(config(tmp_path, folder, "mobilenet_v3_small", epochs=1, image_size=32, weights=str(wrapped),
                 unfreeze={"head": 1}, train_bn=False), log=lines.append)  # the backbone stays as loaded
    assert any("weights from" in line and "skipped 2: classifier.3.weight" in line for line in lines), lines
    model = load_checkpoint(tmp_path / "run" / "last.pt")
    assert model.name == "mobilenet_v3_small" and model.class_names == ["blue", "green", "red"]
    first = next(k for k in source.state_dict() if k.endswith("weight"))
    assert torch.equal(model.module.state_dict()[first], source.state_dict()[first])


@pytest.mark.slow
def test_timm_model(tmp_path, folder):
    pytest.importorskip("timm")
    train(config(tmp_path, folder, "timm:resnet10t", epochs=1, image_size=32), log=lambda *a: None)
    model = load_checkpoint(tmp_path / "run")
    assert model.name == "timm:resnet10t" and model.module(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


# --- Oxford 102 Flowers ------------------------------------------------------------------------------

@pytest.fixture
def flowers(tmp_path):
    """The three official files: 102flowers.tgz (jpg/image_0000N.jpg), imagelabels.mat, setid.mat."""
    scipy_io = pytest.importorskip("scipy.io")
    folder = tmp_path / "flowers"
    (folder / "jpg").mkdir(parents=True)
    labels = [1, 1, 3, 3, 102, 102, 1, 3]
    for i, label in enumerate(labels, 1):
        Image.fromarray(np.full((20, 20, 3), 2 * label, np.uint8)).save(folder / "jpg" / f"image_{i:05d}.jpg")
    with tarfile.open(folder / "102flowers.tgz", "w:gz") as archive:
        archive.add(folder / "jpg", arcname="jpg")
    for path in (folder / "jpg").iterdir():
        path.unlink()
    (folder / "jpg").rmdir()
    scipy_io.savemat(folder / "imagelabels.mat", {"labels": np.array([labels])})
    scipy_io.savemat(folder / "setid.mat", {"trnid": np.array([[1, 3, 5]]), "valid": np.array([[2, 4, 6]]),
                                            "tstid": np.array([[7, 8]])})
    return folder


def test_flowers102_reads_the_official_files(flowers, pm):
    from xviz.datasets import load_dataset

    train_set, spec = load_dataset("flowers102", "train", root=flowers, pm=pm, download=False)
    assert (flowers / "jpg" / "image_00001.jpg").is_file()  # extracted from the archive
    assert len(train_set) == 6 and sorted(train_set.targets) == [0, 0, 2, 2, 101, 101]
    assert train_set.classes[0] == "pink primrose" and len(train_set.classes) == 102
    test_set, _ = load_dataset("flowers102", "test", root=flowers, pm=pm, download=False)
    assert [t for t in test_set.targets] == [0, 2] and test_set[0][0].shape == (3, 224, 224)
    val, _ = load_dataset("flowers102", "test", root=flowers, pm=pm, download=False, val_as_test=True)
    assert val.targets == [0, 2, 101]


def test_flowers102_missing_files_is_one_line(tmp_path, pm):
    from xviz.datasets import load_dataset

    with pytest.raises(XvizError, match=r"flowers-102/jpg` is missing; put 102flowers.tgz, imagelabels.mat, "
                                        r"setid.mat from https://www.robots.ox.ac.uk"):
        load_dataset("flowers102", "train", root=tmp_path, pm=pm, download=False)


def test_flowers102_offline_is_one_line(tmp_path, pm, monkeypatch):
    """download=True (the default) without the network: one line naming the folder, what to put there."""
    import urllib.error

    import torchvision.datasets.flowers102 as tv_flowers

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_flowers, "download_and_extract_archive", offline)
    from xviz.datasets import load_dataset

    with pytest.raises(XvizError, match=r"`.*flowers-102` does not hold Oxford 102 Flowers and downloading it failed "
                                        r"\(.*name resolution.*\); put 102flowers.tgz"):
        load_dataset("flowers102", "train", root=tmp_path, pm=pm)


def test_flowers_recipe_trains_on_the_fake_archive(tmp_path, flowers):
    """The fine-tuning guide's recipe (concat head, gradual unfreezing, Nesterov SGD, discriminative lrs),
    small: resnet18 at 32 px with random weights (the pretrained ones need the network)."""
    cfg = make_config("flowers102-finetune", data=str(flowers), dataset_options={"download": False},
                      model="resnet18", weights="none", image_size=32, epochs=2, batch_size=3,
                      unfreeze={"head": 1, "layer4": 2, "all": 2}, out=str(tmp_path / "run"))
    lines = []
    result = train(cfg, log=lines.append)
    assert len(result.history) == 2 and cfg.nesterov and cfg.head == "concat"
    assert any("epoch 1: training head" in line for line in lines), lines
    assert read_checkpoint(tmp_path / "run" / "last.pt")["class_names"][101] == "blackberry lily"
