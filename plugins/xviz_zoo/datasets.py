"""Real datasets: CIFAR-10/100, CUB-200-2011, Stanford Dogs, MIT Indoor 67, Food-101, Caltech-256.

Each is read from the layout its official archive extracts to (see ``docs/datasets.md``). ``root``
is the folder holding the extracted archive (``--data PATH``) or the extracted top folder itself;
``None`` means ``$XVIZ_DATA/<name>`` or, without ``XVIZ_DATA``, ``~/.cache/xviz/data/<name>``. A
``<name>`` subfolder of ``root`` is searched too, so one ``--data ~/data`` can hold them all. Only
CIFAR downloads itself (through torchvision); the others raise an :class:`XvizError` naming the
missing file and where to get the data.

Every built dataset has ``classes`` (index = label), ``samples`` (``(path, label)`` pairs),
``targets``, ``__len__``, ``__getitem__(i) -> (transform(image), label)`` and ``image(i)`` (the PIL
image); images are read with :func:`xviz.images.read_image`, so a damaged file raises an
:class:`XvizError` naming it. ``cub200`` adds ``box(i)``, ``parts(i)`` and ``part_names``.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np

from xviz.datasets import DatasetSpec
from xviz.errors import XvizError
from xviz.images import IMAGE_SUFFIXES, Preprocessing, read_image

SPLITS = ("train", "test")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_PREPROCESSING = Preprocessing(256, 224, IMAGENET_MEAN, IMAGENET_STD)
CIFAR10_PREPROCESSING = Preprocessing(None, None, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
CIFAR100_PREPROCESSING = Preprocessing(None, None, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)

# where each dataset comes from: (what to download, from where, the folder the archive extracts to)
SOURCES = {
    "cifar10": ("CIFAR-10 (cifar-10-python.tar.gz)", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": ("CIFAR-100 (cifar-100-python.tar.gz)", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
    "cub200": ("CUB-200-2011 (CUB_200_2011.tgz)", "https://data.caltech.edu/records/65de6-vp158"),
    "stanford_dogs": ("Stanford Dogs (images.tar and lists.tar, extracted into one folder)",
                      "http://vision.stanford.edu/aditya86/ImageNetDogs/"),
    "mit_indoor67": ("MIT Indoor 67 (indoorCVPR_09.tar, TrainImages.txt and TestImages.txt in one folder)",
                     "https://web.mit.edu/torralba/www/indoor.html"),
    "food101": ("Food-101 (food-101.tar.gz)", "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/"),
    "caltech256": ("Caltech-256 (256_ObjectCategories.tar)", "https://data.caltech.edu/records/nyy15-4j048"),
}


# --- shared helpers -------------------------------------------------------------------------------

def default_root(name: str) -> Path:
    """``$XVIZ_DATA/<name>``, or ``~/.cache/xviz/data/<name>`` when ``XVIZ_DATA`` is unset."""
    base = os.environ.get("XVIZ_DATA")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "xviz" / "data") / name


def _root(name: str, root) -> Path:
    return default_root(name) if root is None else Path(root).expanduser()


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _get_data(name: str) -> str:
    what, url = SOURCES[name]
    return (f"download {what} from {url}, extract it and pass --data PATH (the folder holding it) "
            f"or put it under {default_root(name)} (set XVIZ_DATA to move that folder)")


def _missing(name: str, path: Path) -> XvizError:
    kind = "folder" if not path.suffix else "file"
    return XvizError(f"dataset `{name}`: {kind} `{path}` is missing; {_get_data(name)}")


def _require(name: str, path: Path) -> Path:
    if not path.exists():
        raise _missing(name, path)
    return path


def _check_split(name: str, split: str) -> None:
    if split not in SPLITS:
        raise XvizError(f"dataset `{name}` has no split `{split}`: use train or test")


def _start(name: str, split: str, root, options: dict, allowed=()) -> Path:
    """Check the split and the options of dataset ``name``; returns the folder to look in."""
    _check_split(name, split)
    _check_options(name, options, allowed)
    return _root(name, root)


def _flag(name: str, key: str, value) -> bool:
    """A yes/no option, also as text from the command line (``--dataset-options download=false``)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise XvizError(f"dataset `{name}`: {key} must be true or false, not `{value}`")


def _check_options(name: str, options: dict, allowed=()) -> None:
    if options:
        takes = f"takes only {', '.join(f'`{a}`' for a in allowed)}" if allowed else "takes no options"
        raise XvizError(f"dataset `{name}` {takes}; got {', '.join(f'`{k}`' for k in options)}")


def _locate(root: Path, name: str, top: str, marker: str) -> Path:
    """The folder holding ``marker``: ``root/top``, ``root``, ``root/name/top`` or ``root/name``.

    When none holds it, the folder where it is expected (for the error message).
    """
    chain = [root / top, root, root / name / top, root / name] if top else [root, root / name]
    for folder in chain:
        if (folder / marker).exists():
            return folder
    if not top:
        return root / name if (root / name).is_dir() else root
    for folder in (root / top, root / name / top):
        if folder.is_dir():
            return folder
    if root.name == top:
        return root
    return root / name / top if (root / name).is_dir() else root / top


def _lines(name: str, path: Path) -> list[str]:
    _require(name, path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise XvizError(f"dataset `{name}`: cannot read `{path}` ({_one_line(exc)})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _table(name: str, path: Path, columns: int, exact: bool = True) -> list[list[str]]:
    """Whitespace-separated rows of ``path``; ``exact=False`` lets the last column hold spaces."""
    rows = []
    for number, line in enumerate(_lines(name, path), 1):
        row = line.split() if exact else line.split(maxsplit=columns - 1)
        if len(row) != columns:
            raise XvizError(f"dataset `{name}`: `{path}` line {number} has {len(row)} fields, expected {columns} "
                            f"(`{line[:60]}`); the file is damaged: extract it again")
        rows.append(row)
    return rows


def _bad(name: str, path: Path, what: str) -> XvizError:
    return XvizError(f"dataset `{name}`: `{path}` {what}; the file is damaged: extract it again")


class ImageListDataset:
    """``(transform(read_image(path)), label)`` for each ``(path, label)`` in ``samples``."""

    def __init__(self, name: str, split: str, root: Path, samples: list, classes: list, transform):
        self.name, self.split, self.root = name, split, Path(root)
        self.samples = samples  # [(str path, int label)]
        self.classes = list(classes)
        self.transform = transform

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, index: int):
        """Item ``index`` as an RGB PIL image, untransformed."""
        return read_image(self.samples[index][0])

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        return self.transform(read_image(path)), label

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, split={self.split!r}, root='{self.root}', "
                f"{len(self)} images, {len(self.classes)} classes)")


def _dataset(cls, name, split, folder, samples, classes, transform, source: Path, **extra):
    if not samples:
        raise XvizError(f"dataset `{name}`: `{source}` lists no {split} images; the file is damaged: extract it again")
    ds = cls(name, split, folder, samples, classes, transform)
    for key, value in extra.items():
        setattr(ds, key, value)
    return ds


def _clean(folder_name: str) -> str:
    """``001.Black_footed_Albatross`` -> ``Black_footed_Albatross``; ``n02085620-Chihuahua`` -> ``Chihuahua``."""
    return re.sub(r"^(\d+\.|n\d{8}-)", "", folder_name)


def _dirs(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")] if folder.is_dir() else []


def _subfolders(name: str, folder: Path) -> list[str]:
    _require(name, folder)
    found = sorted(p.name for p in _dirs(folder))
    if not found:
        raise XvizError(f"dataset `{name}`: folder `{folder}` holds no class folders; {_get_data(name)}")
    return found


# --- CIFAR ----------------------------------------------------------------------------------------

class _CifarUnpickler(pickle.Unpickler):
    """Only what the CIFAR batches hold: dicts, lists, strings and numpy arrays (no arbitrary code)."""

    NUMPY = {"numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
             "numpy._core.numeric"}

    def find_class(self, module, name):
        if module in self.NUMPY and name in ("_reconstruct", "ndarray", "dtype", "_frombuffer", "scalar"):
            if module.startswith("numpy.core") and hasattr(np, "_core"):
                module = module.replace("numpy.core", "numpy._core", 1)  # numpy 2 reading numpy 1 pickles
            return super().find_class(module, name)
        if (module, name) == ("_codecs", "encode"):  # bytes in a protocol-2 pickle written by Python 3
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name}")


def _read_batch(name: str, path: Path, label_key: str):
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, encoding="latin1").load()
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = [int(v) for v in entry[label_key]]
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, AttributeError,
            IndexError) as exc:
        raise _bad(name, path, f"is not a CIFAR batch ({_one_line(exc) or type(exc).__name__})") from None
    if len(labels) != len(data):
        raise _bad(name, path, f"holds {len(data)} images but {len(labels)} labels")
    return data, labels


class CifarDataset:
    """CIFAR images held in memory: ``(transform(PIL image), label)``.

    There is one file per batch, not per image: ``samples`` names each item ``<batch file>#<row>``.
    """

    def __init__(self, name, split, folder: Path, files, label_key, classes, transform):
        self.name, self.split, self.root = name, split, folder
        self.classes, self.transform = list(classes), transform
        arrays, self.targets, self.samples = [], [], []
        for path in files:
            data, labels = _read_batch(name, path, label_key)
            arrays.append(data)
            self.targets.extend(labels)
            self.samples.extend((f"{path}#{row}", label) for row, label in enumerate(labels))
        self.data = np.concatenate(arrays)
        bad = [t for t in self.targets if not 0 <= t < len(self.classes)]
        if bad:
            raise XvizError(f"dataset `{name}`: label {bad[0]} in `{folder}` is outside 0..{len(self.classes) - 1}; "
                            "the files are damaged: extract them again")

    def __len__(self) -> int:
        return len(self.data)

    def image(self, index: int):
        from PIL import Image

        return Image.fromarray(self.data[index])

    def __getitem__(self, index: int):
        return self.transform(self.image(index)), self.targets[index]

    def __repr__(self) -> str:
        return f"CifarDataset({self.name!r}, split={self.split!r}, root='{self.root}', {len(self)} images)"


CIFAR = {
    # name: (folder in the archive, train files, test files, label key, classes, torchvision class)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels",
                CIFAR10_CLASSES, "CIFAR10"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", CIFAR100_CLASSES, "CIFAR100"),
}


def _download_cifar(name: str, root: Path) -> None:
    """torchvision's download of the official archive into ``root`` (checked against its MD5)."""
    import torchvision.datasets as tvd
    import torchvision.datasets.utils as tvu

    cls = getattr(tvd, CIFAR[name][5])
    tvu.download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)


def _cifar_files(name: str, root: Path, split: str) -> tuple[Path, list[Path]]:
    top, train, test = CIFAR[name][:3]
    folder = _locate(root, name, top, (train if split == "train" else test)[0])
    return folder, [folder / f for f in (train if split == "train" else test)]


def build_cifar(name: str, split: str, root=None, transform=None, download: bool = True, **options):
    root = _start(name, split, root, options, ("download",))
    download = _flag(name, "download", download)
    top, _, _, label_key, classes, _ = CIFAR[name]
    folder, files = _cifar_files(name, root, split)
    missing = [f for f in files if not f.exists()]
    if missing:
        reason = "download=False"
        if download:
            target = folder.parent  # the archive extracts `top` here
            try:
                _download_cifar(name, target)
                reason = ""
            except Exception as exc:  # offline, refused, disk full, bad archive: all mean "put it there yourself"
                reason = _one_line(exc) or type(exc).__name__
            folder, files = _cifar_files(name, target, split)
            missing = [f for f in files if not f.exists()]
        if missing:
            url = SOURCES[name][1]
            names = CIFAR[name][1] + CIFAR[name][2]
            because = f"could not be downloaded ({reason})" if reason else "the download did not contain it"
            raise XvizError(
                f"dataset `{name}`: `{missing[0]}` is missing and {because}; download {url}, extract it into "
                f"`{folder.parent}` (so that `{folder}` holds {', '.join(names)}) and pass "
                f"--data {folder.parent} or set XVIZ_DATA")
    return CifarDataset(name, split, folder, files, label_key, classes,
                        transform or SPECS_PREPROCESSING[name].tensor)


# --- CUB-200-2011 ---------------------------------------------------------------------------------

class CubDataset(ImageListDataset):
    """CUB-200-2011 with its bounding boxes and part locations (in original image pixels).

    ``box(i)``: ``(x, y, width, height)``; ``parts(i)``: ``{part_id: (x, y, visible)}`` for the 15 parts
    (``part_names[part_id]``, e.g. ``"beak"``). Both are read from the archive on first use.
    """

    image_ids: list  # CUB's 1-based image id of each item

    def _annotations(self):
        if getattr(self, "_boxes", None) is None:
            try:
                self._read_annotations()
            except ValueError as exc:
                raise _bad(self.name, self.root, f"holds a damaged annotation file ({_one_line(exc)})") from None
        return self._boxes, self._parts, self._part_names

    def _read_annotations(self):
        """Parse boxes and part locations of this split's images (about half a second for the full archive)."""
        name, folder = self.name, self.root
        wanted = set(self.image_ids)
        boxes = {}
        for image_id, *xywh in _table(name, folder / "bounding_boxes.txt", 5):
            if int(image_id) in wanted:
                boxes[int(image_id)] = tuple(float(v) for v in xywh)
        part_names = {int(i): part for i, part in _table(name, folder / "parts" / "parts.txt", 2,
                                                          exact=False)}
        parts = {i: {} for i in wanted}
        for image_id, part_id, x, y, visible in _table(name, folder / "parts" / "part_locs.txt", 5):
            if int(image_id) in wanted:
                parts[int(image_id)][int(part_id)] = (float(x), float(y), bool(int(float(visible))))
        missing = wanted - boxes.keys()
        if missing:
            raise _bad(name, folder / "bounding_boxes.txt", f"has no box for image {min(missing)}")
        self._part_names, self._parts, self._boxes = part_names, parts, boxes

    def box(self, index: int) -> tuple[float, float, float, float]:
        return self._annotations()[0][self.image_ids[index]]

    def parts(self, index: int) -> dict:
        return self._annotations()[1][self.image_ids[index]]

    @property
    def part_names(self) -> dict:
        return self._annotations()[2]


def build_cub(split: str, root=None, transform=None, **options):
    name = "cub200"
    root = _start(name, split, root, options)
    folder = _locate(root, name, "CUB_200_2011", "images.txt")
    files = {f: folder / f for f in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")}
    for path in files.values():
        _require(name, path)
    _require(name, folder / "images")
    try:
        classes = [_clean(c) for _, c in sorted(((int(i), c) for i, c in _table(name, files["classes.txt"], 2)))]
        paths = {int(i): p for i, p in _table(name, files["images.txt"], 2, exact=False)}
        labels = {int(i): int(c) - 1 for i, c in _table(name, files["image_class_labels.txt"], 2)}
        is_train = {int(i): t == "1" for i, t in _table(name, files["train_test_split.txt"], 2)}
    except ValueError as exc:
        raise _bad(name, folder, f"holds a damaged metadata file ({_one_line(exc)})") from None
    ids = sorted(i for i in paths if is_train.get(i, None) == (split == "train"))
    for image_id in paths:
        if image_id not in labels:
            raise _bad(name, files["image_class_labels.txt"], f"has no label for image {image_id}")
        if image_id not in is_train:
            raise _bad(name, files["train_test_split.txt"], f"does not say whether image {image_id} is train or test")
        if not 0 <= labels[image_id] < len(classes):
            raise _bad(name, files["image_class_labels.txt"], f"gives image {image_id} an unknown class")
    samples = [(str(folder / "images" / paths[i]), labels[i]) for i in ids]
    ds = _dataset(CubDataset, name, split, folder, samples, classes, transform or IMAGENET_PREPROCESSING.tensor,
                  files["train_test_split.txt"], image_ids=ids)
    return ds


# --- Stanford Dogs, MIT Indoor 67, Food-101, Caltech-256 -----------------------------------------

def _mat_strings(values) -> list[str]:
    out = []
    for v in np.ravel(values):
        while isinstance(v, np.ndarray):  # cells arrive as (1,)-arrays of strings, depending on loadmat flags
            v = v.ravel()[0] if v.size else ""
        out.append(str(v))
    return out


def build_stanford_dogs(split: str, root=None, transform=None, **options):
    name = "stanford_dogs"
    root = _start(name, split, root, options)
    folder = _locate(root, name, "", "Images")
    images = folder / "Images"
    classes_dirs = _subfolders(name, images)
    split_file = _require(name, folder / f"{split}_list.mat")
    from scipy.io import loadmat

    try:
        mat = loadmat(str(split_file))
        files, labels = _mat_strings(mat["file_list"]), [int(v) - 1 for v in np.ravel(mat["labels"])]
    except KeyError as exc:
        raise _bad(name, split_file, f"has no `{exc.args[0]}`") from None
    except (OSError, ValueError, TypeError, NotImplementedError) as exc:
        raise _bad(name, split_file, f"is not a MATLAB file xviz can read ({_one_line(exc)})") from None
    if len(files) != len(labels):
        raise _bad(name, split_file, f"has {len(files)} files but {len(labels)} labels")
    samples = []
    for rel, label in zip(files, labels):
        breed = rel.replace("\\", "/").split("/")[0]
        if not 0 <= label < len(classes_dirs) or classes_dirs[label] != breed:
            raise _bad(name, split_file, f"gives `{rel}` label {label + 1}, but the folders of `{images}` "
                       "number that breed otherwise")
        samples.append((str(images / rel), label))
    return _dataset(ImageListDataset, name, split, folder, samples, [_clean(c) for c in classes_dirs],
                    transform or IMAGENET_PREPROCESSING.tensor, split_file)


def _listed_samples(name: str, split_file: Path, images: Path, classes: list[str], suffix: str = ""):
    """Samples from lines ``class/file`` (+ ``suffix``) of ``split_file``, under ``images``."""
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for line in _lines(name, split_file):
        rel = line.replace("\\", "/")
        cls = rel.split("/")[0]
        if cls not in index or "/" not in rel:
            raise _bad(name, split_file, f"lists `{line}`, whose class `{cls}` is not one of the {len(classes)}")
        samples.append((str(images / (rel + suffix)), index[cls]))
    return samples


def build_mit_indoor67(split: str, root=None, transform=None, **options):
    name = "mit_indoor67"
    root = _start(name, split, root, options)
    folder = _locate(root, name, "", "Images")
    images = folder / "Images"
    classes = _subfolders(name, images)
    split_file = _require(name, folder / ("TrainImages.txt" if split == "train" else "TestImages.txt"))
    samples = _listed_samples(name, split_file, images, classes)
    return _dataset(ImageListDataset, name, split, folder, samples, classes,
                    transform or IMAGENET_PREPROCESSING.tensor, split_file)


def build_food101(split: str, root=None, transform=None, **options):
    name = "food101"
    root = _start(name, split, root, options)
    folder = _locate(root, name, "food-101", "meta")
    classes = _lines(name, folder / "meta" / "classes.txt")
    split_file = _require(name, folder / "meta" / f"{split}.txt")
    images = _require(name, folder / "images")
    samples = _listed_samples(name, split_file, images, classes, suffix=".jpg")
    return _dataset(ImageListDataset, name, split, folder, samples, classes,
                    transform or IMAGENET_PREPROCESSING.tensor, split_file)


CALTECH_CLUTTER = "257.clutter"


def build_caltech256(split: str, root=None, transform=None, train_per_class: int = 60,
                     test_per_class: int | None = None, seed: int = 0, **options):
    """No official split: per class, the sorted images are shuffled with ``numpy.random.default_rng((seed,
    class index))``; the first ``train_per_class`` train, the next ``test_per_class`` (all the rest by
    default) test. ``257.clutter`` is left out."""
    name = "caltech256"
    root = _start(name, split, root, options, ("train_per_class", "test_per_class", "seed"))
    if not isinstance(train_per_class, int) or train_per_class < 1:
        raise XvizError(f"dataset `{name}`: train_per_class must be a positive integer, not `{train_per_class}`")
    if test_per_class is not None and (not isinstance(test_per_class, int) or test_per_class < 1):
        raise XvizError(f"dataset `{name}`: test_per_class must be a positive integer, not `{test_per_class}`")
    top = "256_ObjectCategories"
    folder = next((f for f in (root / top, root / name / top) if f.is_dir()), root / top)
    if root.name == top or any(re.match(r"\d{3}\.", p.name) for p in _dirs(root)):
        folder = root  # root is the category folder itself
    classes_dirs = [c for c in _subfolders(name, folder) if c != CALTECH_CLUTTER]
    if not classes_dirs:
        raise XvizError(f"dataset `{name}`: folder `{folder}` holds no class folders; {_get_data(name)}")
    samples = []
    for label, cls in enumerate(classes_dirs):
        files = sorted(p for p in (folder / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        order = np.random.default_rng((seed, label)).permutation(len(files))
        chosen = order[:train_per_class] if split == "train" else order[train_per_class:]
        if split == "test" and test_per_class is not None:
            chosen = chosen[:test_per_class]
        samples.extend((str(files[i]), label) for i in sorted(chosen))
    if not samples:
        raise XvizError(f"dataset `{name}`: no {split} images: every class folder of `{folder}` has at most "
                        f"train_per_class={train_per_class} images; lower train_per_class")
    return _dataset(ImageListDataset, name, split, folder, samples, [_clean(c) for c in classes_dirs],
                    transform or IMAGENET_PREPROCESSING.tensor, folder)


# --- registry entries -----------------------------------------------------------------------------

SPECS_PREPROCESSING = {"cifar10": CIFAR10_PREPROCESSING, "cifar100": CIFAR100_PREPROCESSING}


def _cifar_builder(name: str):
    def build(split, root=None, transform=None, **options):
        return build_cifar(name, split, root=root, transform=transform, **options)

    build.__name__ = f"build_{name}"
    return build


def dataset_specs() -> list[DatasetSpec]:
    """The real datasets, for ``xviz_register_datasets``."""
    imagenet = dict(preprocessing=IMAGENET_PREPROCESSING, augment=("rrc", "flip"))
    return [
        DatasetSpec("cifar10", _cifar_builder("cifar10"), CIFAR10_CLASSES, CIFAR10_PREPROCESSING,
                    "CIFAR-10: 32x32, 50,000 train / 10,000 test (torchvision; downloads when online)",
                    augment=("crop", "flip")),
        DatasetSpec("cifar100", _cifar_builder("cifar100"), CIFAR100_CLASSES, CIFAR100_PREPROCESSING,
                    "CIFAR-100 fine labels: 32x32, 50,000 train / 10,000 test (torchvision; downloads when online)",
                    augment=("crop", "flip")),
        DatasetSpec("cub200", build_cub, (), summary="CUB-200-2011: 200 bird species, 5,994 train / 5,794 test, "
                    "boxes and 15 part locations (--data PATH)", **imagenet),
        DatasetSpec("stanford_dogs", build_stanford_dogs, (), summary="Stanford Dogs: 120 breeds, 12,000 train / "
                    "8,580 test, official lists (--data PATH)", **imagenet),
        DatasetSpec("mit_indoor67", build_mit_indoor67, (), summary="MIT Indoor 67: 67 scenes, 5,360 train / "
                    "1,340 test, official lists (--data PATH)", **imagenet),
        DatasetSpec("food101", build_food101, (), summary="Food-101: 101 dishes, 75,750 train / 25,250 test, "
                    "official split (--data PATH)", **imagenet),
        DatasetSpec("caltech256", build_caltech256, (), summary="Caltech-256: 256 categories (clutter left out), "
                    "60 train per class by a seeded shuffle, rest test (--data PATH)", **imagenet),
    ]
