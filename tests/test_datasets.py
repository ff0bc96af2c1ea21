"""The real datasets on tiny fake folders laid out like their official archives (never the network)."""

import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xviz.errors import XvizError
from xviz.registry import datasets as registered
from xviz_zoo.datasets import CIFAR10_CLASSES, CIFAR100_CLASSES, dataset_specs

SPECS = {s.name: s for s in dataset_specs()}
NAMES = ("cifar10", "cifar100", "cub200", "stanford_dogs", "mit_indoor67", "food101", "caltech256")


def build(name, split, root, **kw):
    return SPECS[name].build(split, root=root, **kw)


def jpg(path: Path, size=(12, 16), value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def small_tensor(img):
    return torch.full((1, 2, 2), float(img.size[0]))


def check_items(ds, size):
    """Default transform gives (3, size, size); a custom transform is applied to the PIL image."""
    x, label = ds[0]
    assert isinstance(x, torch.Tensor) and x.shape == (3, size, size) and x.dtype == torch.float32
    assert label == ds.samples[0][1] and isinstance(label, int)
    ds.transform = small_tensor
    x, _ = ds[len(ds) - 1]
    assert x.shape == (1, 2, 2) and float(x[0, 0, 0]) == ds.image(len(ds) - 1).size[0]


# --- fake archives --------------------------------------------------------------------------------

def fake_cub(root: Path) -> Path:
    top = root / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    images, labels, split, boxes, locs = [], [], [], [], []
    image_id = 0
    for c, cls in enumerate(classes, 1):
        for k in range(3):
            image_id += 1
            rel = f"{cls}/{cls[4:]}_{k:04d}_{image_id}.jpg"
            jpg(top / "images" / rel, (20 + k, 16), image_id)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c}")
            split.append(f"{image_id} {1 if k < 2 else 0}")  # 2 train, 1 test per class
            boxes.append(f"{image_id} {image_id}.0 2.5 10.0 {image_id + 0.5}")
            for part in (1, 2):
                visible = int(part == 1 or image_id % 2)
                locs.append(f"{image_id} {part} {visible * (image_id + part)}.0 {visible * 3}.0 {visible}")
    (top / "parts").mkdir(parents=True)
    for name, lines in (("images.txt", images), ("image_class_labels.txt", labels), ("train_test_split.txt", split),
                        ("classes.txt", [f"{i} {c}" for i, c in enumerate(classes, 1)]),
                        ("bounding_boxes.txt", boxes), ("parts/parts.txt", ["1 back", "2 left eye"]),
                        ("parts/part_locs.txt", locs)):
        (top / name).write_text("\n".join(lines) + "\n")
    return top


def fake_dogs(root: Path) -> Path:
    from scipy.io import savemat

    breeds = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02097130-giant_schnauzer"]
    lists = {"train": [], "test": []}
    for b, breed in enumerate(breeds, 1):
        for k in range(3):
            rel = f"{breed}/{breed.split('-')[0]}_{k}.jpg"
            jpg(root / "Images" / rel, (14, 10), b * 10 + k)
            lists["train" if k < 2 else "test"].append((rel, b))
    for split, items in lists.items():
        file_list = np.empty((len(items), 1), dtype=object)
        for i, (rel, _) in enumerate(items):
            file_list[i, 0] = np.array([rel])
        savemat(root / f"{split}_list.mat", {"file_list": file_list, "annotation_list": file_list,
                                             "labels": np.array([[b] for _, b in items], dtype=np.uint8)})
    return root


def fake_indoor(root: Path) -> Path:
    lines = {"TrainImages.txt": [], "TestImages.txt": []}
    for c, cls in enumerate(["airport_inside", "bakery", "kitchen"]):
        for k in range(3):
            rel = f"{cls}/img_{k}.jpg"
            jpg(root / "Images" / rel, (10, 12), c * 10 + k)
            lines["TrainImages.txt" if k else "TestImages.txt"].append(rel)
    for name, items in lines.items():
        (root / name).write_text("\r\n".join(items) + "\r\n")  # the official files have CRLF endings
    return root


def fake_food(root: Path) -> Path:
    top = root / "food-101"
    classes = ["apple_pie", "baby_back_ribs"]
    lines = {"train": [], "test": []}
    for c, cls in enumerate(classes):
        for k in range(4):
            jpg(top / "images" / cls / f"{1000 + k}.jpg", (9, 9), c * 10 + k)
            lines["train" if k < 3 else "test"].append(f"{cls}/{1000 + k}")
    (top / "meta").mkdir()
    (top / "meta" / "classes.txt").write_text("\n".join(classes) + "\n")
    for split, items in lines.items():
        (top / "meta" / f"{split}.txt").write_text("\n".join(items) + "\n")
    return top


def fake_caltech(root: Path) -> Path:
    top = root / "256_ObjectCategories"
    for folder, n in (("001.ak47", 5), ("002.american-flag", 7), ("003.backpack", 4), ("198.spider", 2)):
        for k in range(n):
            jpg(top / folder / f"{folder[:3]}_{k + 1:04d}.jpg", (8, 8), int(folder[:3]) * 100 + k)
    (top / "198.spider" / "RENAME2").write_text("not an image")  # as in the official archive
    jpg(top / "257.clutter" / "257_0001.jpg", (8, 8))
    return top


def cifar_batch(path: Path, n: int, key: str, seed: int, classes: int):
    rng = np.random.default_rng(seed)
    entry = {"batch_label": "fake", key: [int(v) for v in rng.integers(0, classes, n)],
             "data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
             "filenames": [f"img_{i}.png" for i in range(n)]}
    if key == "fine_labels":
        entry["coarse_labels"] = [0] * n
    # protocol 2 with numpy 1.x names, as in the official (Python 2) files
    raw = pickle.dumps(entry, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.write_bytes(raw)
    return entry


def fake_cifar10(root: Path) -> Path:
    top = root / "cifar-10-batches-py"
    top.mkdir(parents=True)
    for i in range(1, 6):
        cifar_batch(top / f"data_batch_{i}", 2, "labels", i, 10)
    cifar_batch(top / "test_batch", 3, "labels", 9, 10)
    (top / "batches.meta").write_bytes(pickle.dumps({"label_names": list(CIFAR10_CLASSES)}, protocol=2))
    return top


def fake_cifar100(root: Path) -> Path:
    top = root / "cifar-100-python"
    top.mkdir(parents=True)
    cifar_batch(top / "train", 4, "fine_labels", 1, 100)
    cifar_batch(top / "test", 2, "fine_labels", 2, 100)
    return top


@pytest.fixture
def no_download(monkeypatch):
    """torchvision's download fails as it does offline; returns the calls it got."""
    import torchvision.datasets.utils as tvu

    calls = []

    def offline(url, root, **kw):
        calls.append((url, root))
        raise urllib.error.URLError("[Errno -3] Temporary failure\nin name resolution")

    monkeypatch.setattr(tvu, "download_and_extract_archive", offline)
    return calls


# --- registry and specs ---------------------------------------------------------------------------

def test_all_datasets_are_registered_and_listed(pm, run_cli):
    specs = registered(pm)
    assert set(NAMES) | {"synthetic"} <= set(specs)
    code, out, _ = run_cli("datasets")
    assert code == 0
    for name in (*NAMES, "synthetic"):
        assert f"\n{name} " in out


def test_specs_preprocessing_and_augmentation():
    assert SPECS["cifar10"].preprocessing.mean == (0.4914, 0.4822, 0.4465)
    assert SPECS["cifar10"].preprocessing.std == (0.2023, 0.1994, 0.2010)
    assert SPECS["cifar100"].preprocessing.mean == (0.5071, 0.4867, 0.4408)
    assert SPECS["cifar100"].preprocessing.std == (0.2675, 0.2565, 0.2761)
    for name in ("cifar10", "cifar100"):
        pre = SPECS[name].preprocessing
        assert (pre.resize, pre.crop) == (None, None) and SPECS[name].augment == ("crop", "flip")
    for name in NAMES[2:]:
        pre = SPECS[name].preprocessing
        assert (pre.resize, pre.crop, pre.mean, pre.std) == (256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        assert SPECS[name].augment == ("rrc", "flip")
    assert list(SPECS["cifar10"].class_names) == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                                   "horse", "ship", "truck"]
    names = list(SPECS["cifar100"].class_names)
    assert len(names) == 100 == len(set(names)) and names == sorted(names)
    assert names[:3] == ["apple", "aquarium_fish", "baby"] and names[-1] == "worm"


@pytest.mark.parametrize("name", NAMES)
def test_bad_split_and_unknown_options(name, tmp_path):
    with pytest.raises(XvizError, match=f"dataset `{name}` has no split `val`: use train or test"):
        build(name, "val", tmp_path)
    with pytest.raises(XvizError, match=f"dataset `{name}` takes .*got `colour`"):
        build(name, "train", tmp_path, colour="red")


# --- CUB-200-2011 ---------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["parent", "top", "named"])
def test_cub(tmp_path, where):
    base = tmp_path / "cub200" if where == "named" else tmp_path
    top = fake_cub(base)
    root = {"parent": tmp_path, "top": top, "named": tmp_path}[where]
    train, test = build("cub200", "train", root), build("cub200", "test", root)
    assert (len(train), len(test)) == (6, 3)
    assert train.classes == ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross"]
    assert train.targets == [0, 0, 1, 1, 2, 2] and test.targets == [0, 1, 2]
    assert test.samples[1] == (str(top / "images" / "002.Laysan_Albatross" / "Laysan_Albatross_0002_6.jpg"), 1)
    check_items(build("cub200", "test", root), 224)
    # annotations of test item 1 (image id 6)
    assert test.box(1) == (6.0, 2.5, 10.0, 6.5)
    assert test.parts(1) == {1: (7.0, 3.0, True), 2: (0.0, 0.0, False)}
    assert train.parts(0) == {1: (2.0, 3.0, True), 2: (3.0, 3.0, True)}
    assert test.part_names == {1: "back", 2: "left eye"}
    assert test.image(1).size == (22, 16)


def test_cub_missing_files(tmp_path):
    top = fake_cub(tmp_path)
    (top / "train_test_split.txt").unlink()
    with pytest.raises(XvizError) as err:
        build("cub200", "train", tmp_path)
    msg = str(err.value)
    assert f"`{top / 'train_test_split.txt'}` is missing" in msg and "--data PATH" in msg
    assert "https://data.caltech.edu/records/65de6-vp158" in msg and "\n" not in msg
    fake_cub(tmp_path / "again")
    (tmp_path / "again" / "CUB_200_2011" / "parts" / "part_locs.txt").unlink()
    ds = build("cub200", "test", tmp_path / "again")  # annotations are read on first use
    with pytest.raises(XvizError, match="part_locs.txt` is missing"):
        ds.parts(0)


def test_cub_empty_folder_names_the_expected_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XVIZ_DATA", str(tmp_path))
    with pytest.raises(XvizError) as err:
        build("cub200", "train", None)
    expected = tmp_path / "cub200" / "CUB_200_2011" / "images.txt"
    assert f"`{expected}` is missing" in str(err.value)
    fake_cub(tmp_path / "cub200")  # $XVIZ_DATA/cub200/CUB_200_2011
    assert len(build("cub200", "train", None)) == 6


def test_corrupt_image_names_the_file(tmp_path):
    top = fake_cub(tmp_path)
    ds = build("cub200", "train", tmp_path)
    bad = Path(ds.samples[2][0])
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(XvizError, match=f"`{bad}`"):
        ds[2]
    assert str(bad).startswith(str(top))


def test_damaged_metadata_line(tmp_path):
    top = fake_cub(tmp_path)
    (top / "image_class_labels.txt").write_text("1 1\n2\n")
    with pytest.raises(XvizError, match=r"image_class_labels.txt` line 2 has 1 fields, expected 2"):
        build("cub200", "train", tmp_path)
    (top / "image_class_labels.txt").write_text("1 one\n")
    with pytest.raises(XvizError, match=r"CUB_200_2011` holds a damaged metadata file"):
        build("cub200", "train", tmp_path)


# --- Stanford Dogs, MIT Indoor 67, Food-101 -------------------------------------------------------

def test_stanford_dogs(tmp_path):
    fake_dogs(tmp_path)
    train, test = build("stanford_dogs", "train", tmp_path), build("stanford_dogs", "test", tmp_path)
    assert (len(train), len(test)) == (6, 3)
    assert train.classes == ["Chihuahua", "Japanese_spaniel", "giant_schnauzer"]
    assert train.targets == [0, 0, 1, 1, 2, 2] and test.targets == [0, 1, 2]
    assert test.samples[2][0] == str(tmp_path / "Images" / "n02097130-giant_schnauzer" / "n02097130_2.jpg")
    check_items(train, 224)
    (tmp_path / "test_list.mat").unlink()
    with pytest.raises(XvizError, match=f"`{tmp_path / 'test_list.mat'}` is missing.*--data PATH"):
        build("stanford_dogs", "test", tmp_path)


def test_stanford_dogs_labels_must_match_folders(tmp_path):
    from scipy.io import savemat

    fake_dogs(tmp_path)
    savemat(tmp_path / "train_list.mat", {"file_list": np.array([["n02085620-Chihuahua/n02085620_0.jpg"]],
                                                                 dtype=object), "labels": np.array([[2]])})
    with pytest.raises(XvizError, match="train_list.mat` gives .* label 2"):
        build("stanford_dogs", "train", tmp_path)


def test_mit_indoor67(tmp_path):
    fake_indoor(tmp_path / "mit_indoor67")  # found under root/<name> too
    train, test = build("mit_indoor67", "train", tmp_path), build("mit_indoor67", "test", tmp_path)
    assert (len(train), len(test)) == (6, 3)
    assert train.classes == ["airport_inside", "bakery", "kitchen"]
    assert test.targets == [0, 1, 2] and train.targets == [0, 0, 1, 1, 2, 2]
    assert test.samples[1][0] == str(tmp_path / "mit_indoor67" / "Images" / "bakery" / "img_0.jpg")
    check_items(test, 224)
    (tmp_path / "mit_indoor67" / "TrainImages.txt").unlink()
    with pytest.raises(XvizError, match="TrainImages.txt` is missing"):
        build("mit_indoor67", "train", tmp_path)
    (tmp_path / "mit_indoor67" / "TestImages.txt").write_text("library/x.jpg\n")
    with pytest.raises(XvizError, match="lists `library/x.jpg`, whose class `library` is not one of the 3"):
        build("mit_indoor67", "test", tmp_path)


def test_food101(tmp_path):
    top = fake_food(tmp_path)
    for root in (tmp_path, top):
        train, test = build("food101", "train", root), build("food101", "test", root)
        assert (len(train), len(test)) == (6, 2)
        assert train.classes == ["apple_pie", "baby_back_ribs"] and test.targets == [0, 1]
        assert test.samples[0] == (str(top / "images" / "apple_pie" / "1003.jpg"), 0)
    check_items(train, 224)
    (top / "meta" / "test.txt").unlink()
    with pytest.raises(XvizError) as err:
        build("food101", "test", tmp_path)
    assert f"`{top / 'meta' / 'test.txt'}` is missing" in str(err.value)
    assert "food-101" in str(err.value) and "--data PATH" in str(err.value)


# --- Caltech-256 ----------------------------------------------------------------------------------

def test_caltech256_seeded_split(tmp_path):
    top = fake_caltech(tmp_path)
    kw = dict(train_per_class=3)
    train, test = build("caltech256", "train", tmp_path, **kw), build("caltech256", "test", tmp_path, **kw)
    assert train.classes == ["ak47", "american-flag", "backpack", "spider"]  # 257.clutter left out
    assert (len(train), len(test)) == (3 + 3 + 3 + 2, 2 + 4 + 1 + 0)
    assert not {p for p, _ in train.samples} & {p for p, _ in test.samples}
    assert train.targets == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3]
    assert all(p.endswith(".jpg") for p, _ in train.samples + test.samples)
    # deterministic: same seed, same split (root given as the category folder itself); another seed, another one
    assert build("caltech256", "train", top, **kw).samples == train.samples
    other = build("caltech256", "train", tmp_path, seed=1, **kw)
    assert other.samples != train.samples and len(other) == len(train)
    assert len(build("caltech256", "test", tmp_path, test_per_class=1, **kw)) == 3
    # the default takes 60 per class: nothing is left to test on in this tiny folder
    assert len(build("caltech256", "train", tmp_path)) == 18
    with pytest.raises(XvizError, match="no test images.*lower train_per_class"):
        build("caltech256", "test", tmp_path)
    check_items(train, 224)


def test_caltech256_bad_options_and_missing_folder(tmp_path):
    fake_caltech(tmp_path)
    with pytest.raises(XvizError, match="train_per_class must be a positive integer"):
        build("caltech256", "train", tmp_path, train_per_class=0)
    with pytest.raises(XvizError) as err:
        build("caltech256", "train", tmp_path / "nowhere")
    assert f"`{tmp_path / 'nowhere' / '256_ObjectCategories'}` is missing" in str(err.value)
    assert "https://data.caltech.edu/records/nyy15-4j048" in str(err.value)


# --- CIFAR ----------------------------------------------------------------------------------------

def test_cifar10_from_local_files(tmp_path, no_download):
    top = fake_cifar10(tmp_path)
    for root in (tmp_path, top):
        train, test = build("cifar10", "train", root), build("cifar10", "test", root)
        assert (len(train), len(test)) == (10, 3)
        assert train.classes == list(CIFAR10_CLASSES)
    assert no_download == []
    x, label = train[3]
    assert x.shape == (3, 32, 32) and 0 <= label < 10
    expected = pickle.loads((top / "data_batch_2").read_bytes(), encoding="latin1")
    assert train.targets[2:4] == expected["labels"]
    pixels = expected["data"][1].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(np.asarray(train.image(3)), pixels)
    pre = SPECS["cifar10"].preprocessing
    assert torch.allclose(x, pre.tensor(Image.fromarray(pixels)))
    assert train.samples[3] == (f"{top / 'data_batch_2'}#1", train.targets[3])
    check_items(test, 32)


def test_cifar100_from_xviz_data(tmp_path, monkeypatch, no_download):
    monkeypatch.setenv("XVIZ_DATA", str(tmp_path))
    fake_cifar100(tmp_path / "cifar100")
    train, test = build("cifar100", "train", None), build("cifar100", "test", None)
    assert (len(train), len(test)) == (4, 2) and train.classes == list(CIFAR100_CLASSES)
    check_items(train, 32)
    assert no_download == []


def test_cifar_offline_is_one_line(tmp_path, no_download):
    with pytest.raises(XvizError) as err:
        build("cifar10", "train", tmp_path / "data")
    msg = str(err.value)
    assert "\n" not in msg and "could not be downloaded" in msg and "Temporary failure in name resolution" in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg
    assert f"extract it into `{tmp_path / 'data'}`" in msg
    assert f"`{tmp_path / 'data' / 'cifar-10-batches-py'}` holds" in msg
    assert no_download == [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", str(tmp_path / "data"))]
    with pytest.raises(XvizError, match=r"cifar-100-python.tar.gz.*--data"):
        build("cifar100", "test", tmp_path / "data")
    with pytest.raises(XvizError, match=r"could not be downloaded \(download=False\)"):
        build("cifar10", "test", tmp_path / "data", download="false")
    assert len(no_download) == 2


def test_cifar_download_fills_the_folder(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    def fake_download(url, root, **kw):
        fake_cifar10(Path(root))

    monkeypatch.setattr(tvu, "download_and_extract_archive", fake_download)
    assert len(build("cifar10", "test", tmp_path)) == 3


def test_cifar_damaged_batch(tmp_path, no_download):
    top = fake_cifar10(tmp_path)
    (top / "test_batch").write_bytes(b"garbage")
    with pytest.raises(XvizError, match=f"`{top / 'test_batch'}` is not a CIFAR batch"):
        build("cifar10", "test", tmp_path)
    (top / "test_batch").write_bytes(pickle.dumps(__import__("os").system))  # no arbitrary code from a pickle
    with pytest.raises(XvizError, match="is not a CIFAR batch .*unexpected object"):
        build("cifar10", "test", tmp_path)


# --- with the training loop -----------------------------------------------------------------------

def test_trains_on_a_fake_folder_and_pickles_for_workers(tmp_path):
    from xviz.checkpoint import read_checkpoint
    from xviz.train import TrainConfig, train

    fake_food(tmp_path / "data")
    ds = build("food101", "train", tmp_path / "data")
    assert pickle.loads(pickle.dumps(ds)).samples == ds.samples  # DataLoader workers get a copy
    cfg = TrainConfig(model="xviz-demo", weights="none", dataset="food101", data=str(tmp_path / "data"),
                      image_size=32, epochs=1, batch_size=4, out=str(tmp_path / "run")).validate()
    result = train(cfg, log=lambda *a: None)
    assert len(result.history) == 1
    assert read_checkpoint(tmp_path / "run" / "last.pt")["class_names"] == ["apple_pie", "baby_back_ribs"]
