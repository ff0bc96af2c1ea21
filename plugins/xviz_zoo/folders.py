"""Your own images: ``imagefolder`` (one subfolder per class, torchvision's ``ImageFolder`` layout) and
Oxford 102 Flowers (``flowers102``, its official files).

``imagefolder`` reads ``ROOT/train`` and ``ROOT/val`` (or ``ROOT/test``) when both are there; otherwise
the class folders of ``ROOT`` are split per class by a seeded shuffle (``val_fraction``, ``seed``). The
split is described by ``dataset.split_record`` (the run folder keeps it as ``split.json``); given back as
the ``split_record`` option it reproduces the same test images even after files are added.

Bad files never stop an epoch: every listed file's header is read when the dataset is built (0.15 ms a
file, 1/24 of decoding it: ``benchmarks/folder_scan.py``) and those PIL cannot open are left out (``dataset.skipped``: ``(path, reason)``); an image
whose header is fine but whose pixels cannot be decoded (a truncated JPEG) is dropped from its batch by
``dataset.collate_fn`` and appended to ``dataset.skip_log`` when one is set.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from xviz.errors import XvizError
from xviz.images import IMAGE_SUFFIXES, read_image

from xviz_zoo.datasets import IMAGENET_PREPROCESSING, ImageListDataset, _check_split, _dirs, _flag, _one_line

NAME = "imagefolder"
VAL_FOLDERS = ("val", "valid", "validation", "test")


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (any depth, as torchvision's ImageFolder), sorted; other files and
    hidden ones are ignored."""
    found = []
    for top, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(top) / f for f in files if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found)


def header_problem(path: Path) -> str | None:
    """Why PIL cannot open ``path`` (its header only: cheap), or None when it can."""
    from PIL import Image, UnidentifiedImageError

    try:
        if path.stat().st_size == 0:
            return "empty file"
        with Image.open(path) as img:
            width, height = img.size
        return None if min(width, height) >= 1 else "no pixels"
    except UnidentifiedImageError:
        return "not an image"
    except (OSError, SyntaxError, ValueError) as exc:
        return _one_line(exc) or type(exc).__name__


class FolderDataset(ImageListDataset):
    """An :class:`ImageListDataset` that drops images it cannot decode instead of failing the epoch."""

    skipped: list = []  # (path, reason) found when built
    skip_log: str | None = None  # a file each decode failure is appended to (set by the training loop)
    split_record: dict | None = None
    class_to_idx: dict = {}

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            return self.transform(read_image(path)), label
        except XvizError as exc:
            if self.skip_log:
                with open(self.skip_log, "a", encoding="utf-8") as log:
                    log.write(f"{path}\t{_one_line(exc)}\n")
            return None

    @staticmethod
    def collate_fn(batch):
        """The default collation of the items that decoded (a batch may come out smaller, or empty)."""
        import torch
        from torch.utils.data import default_collate

        kept = [item for item in batch if item is not None]
        if not kept:
            return torch.zeros(0), torch.zeros(0, dtype=torch.long)
        return default_collate(kept)

    def describe(self) -> str:
        """Classes, images per class and the imbalance (largest / smallest class), in one line."""
        counts = np.bincount(self.targets, minlength=len(self.classes))
        shown = ", ".join(f"{c} {n}" for c, n in zip(self.classes[:8], counts[:8]))
        more = f", ... ({len(self.classes) - 8} more)" if len(self.classes) > 8 else ""
        low = counts.min()
        ratio = f"{counts.max() / low:.1f}x" if low else "a class has none"
        return (f"{self.split}: {len(self)} images in {len(self.classes)} classes ({shown}{more}); "
                f"imbalance {ratio} (largest / smallest class)")


def _folder(root) -> Path:
    if root is None:
        raise XvizError(f"dataset `{NAME}` needs --data ROOT: a folder with one subfolder of images per class "
                        "(or ROOT/train and ROOT/val holding them)")
    root = Path(root).expanduser()
    if not root.exists():
        raise XvizError(f"dataset `{NAME}`: folder `{root}` does not exist: check --data")
    if not root.is_dir():
        raise XvizError(f"dataset `{NAME}`: `{root}` is a file, not a folder: give --data the folder holding "
                        "one subfolder per class")
    return root


def _classes(folder: Path) -> dict[str, list[Path]]:
    """Class name -> its image files, for each subfolder of ``folder``."""
    classes = {d.name: image_files(d) for d in sorted(_dirs(folder), key=lambda d: d.name)}
    if not classes:
        raise XvizError(f"dataset `{NAME}`: `{folder}` holds no class subfolders: put each class's images in "
                        f"a folder named after it ({folder}/cat/1.jpg, {folder}/dog/2.jpg, ...)")
    empty = [c for c, files in classes.items() if not files]
    if empty:
        raise XvizError(f"dataset `{NAME}`: class folder `{folder / empty[0]}` holds no images "
                        f"({', '.join(IMAGE_SUFFIXES)})" + (f" (nor {len(empty) - 1} other class folders)"
                                                            if len(empty) > 1 else "") + ": add images or remove it")
    return classes


def layout(root: Path) -> tuple[Path, Path] | None:
    """``(train folder, val folder)`` when ``root`` holds ``train/`` and ``val/`` (or ``valid/``,
    ``validation/``, ``test/``); None when ``root`` itself holds the class folders."""
    train = root / "train"
    val = next((root / v for v in VAL_FOLDERS if (root / v).is_dir()), None)
    return (train, val) if train.is_dir() and val is not None else None


def _fraction(value) -> float:
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        fraction = -1.0
    if not 0 < fraction < 1:
        raise XvizError(f"dataset `{NAME}`: val_fraction must be a number between 0 and 1 (e.g. 0.2), not `{value}`")
    return fraction


def stratified_split(classes: dict[str, list[Path]], root: Path, fraction: float, seed: int) -> list[str]:
    """The test images (paths relative to ``root``): per class, the sorted files shuffled with
    ``numpy.random.default_rng((seed, class index))``, the first ``round(n * fraction)`` (at least one,
    at most n - 1) taken."""
    small = [c for c, files in classes.items() if len(files) < 2]
    if small:
        raise XvizError(f"dataset `{NAME}`: class `{small[0]}` has {len(classes[small[0]])} image; a class needs "
                        "at least two to be split into train and test: add images, or give ROOT/train and ROOT/val")
    test = []
    for label, files in enumerate(classes.values()):
        take = min(max(1, round(len(files) * fraction)), len(files) - 1)
        order = np.random.default_rng((seed, label)).permutation(len(files))[:take]
        test += [files[i].relative_to(root).as_posix() for i in sorted(order)]
    return test


def _split_samples(root: Path, split: str, fraction: float, seed: int, record: dict | None):
    """``(classes, files of this split per class, record)`` for a root whose class folders are split."""
    classes = _classes(root)
    if record is not None and record.get("layout") == "split":
        if list(record.get("classes", [])) != list(classes):
            raise XvizError(f"dataset `{NAME}`: the class folders of `{root}` are not those the run was trained on "
                            f"({len(record.get('classes', []))} recorded, {len(classes)} now): train a new run")
        test = set(record.get("test", []))
    else:
        test = set(stratified_split(classes, root, fraction, seed))
        record = {"layout": "split", "val_fraction": fraction, "seed": seed, "classes": list(classes),
                  "test": sorted(test)}
    chosen = {c: [f for f in files if (f.relative_to(root).as_posix() in test) == (split == "test")]
              for c, files in classes.items()}
    return list(classes), chosen, record


def _folder_samples(train: Path, val: Path, split: str):
    """``(classes, files of this split per class, record)`` for ``ROOT/train`` + ``ROOT/val``."""
    train_classes = _classes(train)
    val_classes = {d.name: image_files(d) for d in _dirs(val)}
    missing = [c for c in val_classes if c not in train_classes]
    if missing:
        shown = ", ".join(f"`{c}`" for c in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise XvizError(f"dataset `{NAME}`: `{val}` has classes that `{train}` lacks ({shown}): every class of the "
                        "val folder needs a folder of training images")
    if not any(val_classes.values()):
        raise XvizError(f"dataset `{NAME}`: `{val}` holds no images in class subfolders")
    chosen = train_classes if split == "train" else {c: val_classes.get(c, []) for c in train_classes}
    record = {"layout": "folders", "train": train.name, "test": val.name, "classes": list(train_classes)}
    return list(train_classes), chosen, record


def build_imagefolder(split: str, root=None, transform=None, val_fraction=0.2, seed=0, split_record=None):
    """Your own images in class subfolders (see the module's docstring)."""
    _check_split(NAME, split)
    root = _folder(root)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise XvizError(f"dataset `{NAME}`: seed must be a whole number, at least 0, not `{seed}`")
    folders = layout(root)
    if folders is not None:
        classes, chosen, record = _folder_samples(*folders, split)
    else:
        classes, chosen, record = _split_samples(root, split, _fraction(val_fraction), seed, split_record)
    samples, skipped = [], []
    for label, files in enumerate(chosen.values()):
        for path in files:
            problem = header_problem(path)
            if problem:
                skipped.append((str(path), problem))
            else:
                samples.append((str(path), label))
    readable = {label for _, label in samples}
    unreadable = [c for i, c in enumerate(classes) if chosen[c] and i not in readable]
    if unreadable and split == "train":
        raise XvizError(f"dataset `{NAME}`: no image of class `{unreadable[0]}` can be read (all "
                        f"{len(chosen[unreadable[0]])} are damaged or not images): replace them or remove the folder")
    ds = FolderDataset(NAME, split, root, samples, classes, transform or IMAGENET_PREPROCESSING.tensor)
    ds.skipped, ds.split_record = skipped, record
    ds.class_to_idx = {c: i for i, c in enumerate(classes)}
    return ds


# --- Oxford 102 Flowers ---------------------------------------------------------------------------

FLOWERS = "flowers102"
FLOWERS_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
FLOWERS_FILES = ("102flowers.tgz", "imagelabels.mat", "setid.mat")


def _flowers_folder(root) -> Path:
    """The folder holding ``setid.mat`` (or where it belongs): ``ROOT``, ``ROOT/flowers-102`` (torchvision's
    place) or ``ROOT/flowers102``."""
    from xviz_zoo.datasets import default_root

    root = default_root(FLOWERS) if root is None else Path(root).expanduser()
    for folder in (root, root / "flowers-102", root / FLOWERS):
        if (folder / "setid.mat").is_file():
            return folder
    return root / "flowers-102" if root.name != "flowers-102" else root


def _flowers_download(folder: Path) -> None:
    """torchvision's download of the three official files into ``folder`` (checked against their MD5)."""
    from torchvision.datasets import Flowers102

    try:
        Flowers102(str(folder.parent), download=True)
    except Exception as exc:  # offline, refused, disk full
        raise XvizError(f"dataset `{FLOWERS}`: `{folder}` does not hold Oxford 102 Flowers and downloading it failed "
                        f"({_one_line(exc)[:80]}); put {', '.join(FLOWERS_FILES)} from {FLOWERS_URL} in `{folder}` "
                        "and pass --data (the .tgz is extracted for you)") from None


def _flowers_ready(folder: Path, download: bool) -> None:
    import tarfile

    if not (folder / "jpg").is_dir() and (folder / FLOWERS_FILES[0]).is_file():
        try:
            with tarfile.open(folder / FLOWERS_FILES[0]) as archive:
                archive.extractall(folder, filter="data")
        except (OSError, tarfile.TarError) as exc:
            raise XvizError(f"dataset `{FLOWERS}`: `{folder / FLOWERS_FILES[0]}` cannot be extracted "
                            f"({_one_line(exc)}): download it again") from None
    missing = [f for f in ("jpg", *FLOWERS_FILES[1:]) if not (folder / f).exists()]
    if missing and download:
        _flowers_download(folder)
        missing = [f for f in ("jpg", *FLOWERS_FILES[1:]) if not (folder / f).exists()]
    if missing:
        raise XvizError(f"dataset `{FLOWERS}`: `{folder / missing[0]}` is missing; put {', '.join(FLOWERS_FILES)} "
                        f"from {FLOWERS_URL} in `{folder}` and pass --data (the .tgz is extracted for you)")


def _mat(folder: Path, name: str, key: str) -> list[int]:
    from scipy.io import loadmat

    try:
        return [int(v) for v in np.ravel(loadmat(str(folder / name), squeeze_me=True)[key])]
    except KeyError:
        raise XvizError(f"dataset `{FLOWERS}`: `{folder / name}` has no `{key}`; the file is damaged: download it "
                        "again") from None
    except (OSError, ValueError, TypeError, NotImplementedError) as exc:
        raise XvizError(f"dataset `{FLOWERS}`: `{folder / name}` is not a MATLAB file xviz can read "
                        f"({_one_line(exc)}); download it again") from None


def build_flowers102(split: str, root=None, transform=None, download=True, val_as_test=False):
    """Oxford 102 Flowers from its official files: ``jpg/image_NNNNN.jpg`` (``102flowers.tgz``),
    ``imagelabels.mat`` (labels 1..102) and ``setid.mat`` (``trnid``, ``valid``, ``tstid``). Train:
    ``trnid`` + ``valid`` (2,040 images), test: ``tstid`` (6,149); ``val_as_test``: train ``trnid``,
    test ``valid`` (1,020 each). Class names are torchvision's."""
    from torchvision.datasets import Flowers102

    _check_split(FLOWERS, split)
    folder = _flowers_folder(root)
    _flowers_ready(folder, _flag(FLOWERS, "download", download))
    labels = _mat(folder, "imagelabels.mat", "labels")
    val_as_test = _flag(FLOWERS, "val_as_test", val_as_test)
    keys = (["trnid"] if val_as_test else ["trnid", "valid"]) if split == "train" else \
        (["valid"] if val_as_test else ["tstid"])
    ids = sorted(i for key in keys for i in _mat(folder, "setid.mat", key))
    classes = list(Flowers102.classes)
    bad = next((i for i in ids if not 1 <= i <= len(labels) or not 1 <= labels[i - 1] <= len(classes)), None)
    if bad is not None:
        raise XvizError(f"dataset `{FLOWERS}`: image {bad} of `setid.mat` has no label 1..{len(classes)} in "
                        "`imagelabels.mat`; the files are damaged: download them again")
    samples = [(str(folder / "jpg" / f"image_{i:05d}.jpg"), labels[i - 1] - 1) for i in ids]
    ds = FolderDataset(FLOWERS, split, folder, samples, classes, transform or IMAGENET_PREPROCESSING.tensor)
    ds.skipped = []
    return ds
