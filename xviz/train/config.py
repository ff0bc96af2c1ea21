"""The training configuration: one dataclass, filled from a recipe file and command-line flags.

A recipe is a TOML file whose keys are the fields of :class:`TrainConfig`; a typo in a key is an
error naming the closest field. Flags given on the command line override the recipe.

    model = "resnet50"
    weights = "DEFAULT"
    head = "concat"
    dataset = "cub200"
    epochs = 60
    lr = 0.01
    [unfreeze]          # group -> first epoch in which it trains (before: frozen)
    head = 1
    all = 51
    [lr_mult]           # discriminative learning rates: group -> multiplier of lr
    layer4 = 0.1
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from xviz.errors import XvizError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "step", "multistep", "cosine", "onecycle", "halving")
AUGMENTATIONS = ("crop", "flip", "rotate", "jitter", "rrc", "cutout")  # built in xviz/train/augment.py
SEED_MAX = 2**32 - 1  # NumPy's seeds are 32-bit


GROUPS = ("model", "data", "optimisation", "schedule", "freezing", "augmentation", "run folder", "hardware")


def setting(default, *, help: str = "", group: str = "", **rule):
    """A :class:`TrainConfig` field with what it accepts next to it: ``low``/``high`` (inclusive bounds),
    ``above`` (exclusive lower bound), ``choices``; the type comes from the field's annotation
    (``int``, ``float``, ``bool``, ``str``, ``list[str]``, ``dict[str, int]``, ``... | None``). ``help`` is
    the flag's help in ``xviz train --help`` (and the setting's documentation); ``group`` one of :data:`GROUPS`."""
    metadata = {"rule": rule, "help": help, "group": group}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Every knob of ``xviz train``: each field's ``help`` (``xviz train --help``) says what it means."""

    # --- model
    model: str = setting("xviz-demo", group="model", help="the network: a registered model (`xviz models`), any "
                         "torchvision classifier, timm:NAME or path/to/file.py:factory; its head is sized to the "
                         "dataset's classes")
    weights: str = setting("none", group="model", help="the starting point: none (random), DEFAULT (the model's "
                           "pretrained weights) or a PATH (xviz checkpoint or state dict; the layers that fit are taken)")
    head: str | None = setting(None, group="model", help="replace the classifier of a resnet/vgg/densenet: linear or "
                               "concat (max+avg pooling, BatchNorm, dropout, two linear layers)")
    model_options: dict = setting({}, group="model", help="architecture options passed to the model's builder or "
                                  "factory, e.g. attention=after")
    transfer: str = setting("all", choices=("all", "backbone"), group="model", help="what to take from --weights: "
                            "all, or backbone (everything but the head)")
    transfer_exclude: list[str] = setting([], group="model", help="module names whose weights are not taken from "
                                          "--weights (they keep their fresh initialisation)")
    # --- data
    dataset: str = setting("synthetic", group="data", help="a registered dataset (`xviz datasets`), e.g. imagefolder "
                           "for your own folder of class subfolders")
    data: str | None = setting(None, group="data", help="the dataset's folder (default: the dataset's own place); "
                               "for imagefolder the ROOT holding class subfolders, or train/ and val/")
    dataset_options: dict = setting({}, group="data", help="options of the dataset, e.g. val_fraction=0.2 for "
                                    "imagefolder, size=512 for synthetic")
    image_size: int | None = setting(None, low=8, group="data", help="train and test at this input size (pixels) "
                                     "instead of the preprocessing's own crop")
    batch_size: int = setting(64, low=1, group="data", help="images per step (per process under torchrun)")
    # --- optimisation
    optimizer: str = setting("sgd", choices=OPTIMIZERS, group="optimisation", help="sgd, adam or adamw")
    lr: float = setting(0.05, above=0, group="optimisation", help="the base learning rate (the head's; "
                        "--lr-mult scales it per group); `xviz lr-find` suggests one")
    momentum: float = setting(0.9, low=0, high=1, group="optimisation", help="SGD momentum (sgd only)")
    nesterov: bool = setting(False, group="optimisation", help="SGD with Nesterov momentum")
    weight_decay: float = setting(5e-4, low=0, group="optimisation", help="L2 weight decay")
    lr_mult: dict[str, float] = setting({}, low=0, group="optimisation", help="discriminative learning rates: "
                                        "group=multiplier of --lr, e.g. head=1,layer4=0.1,backbone=0.01")
    label_smoothing: float = setting(0.0, low=0, high=1, group="optimisation", help="cross-entropy label smoothing")
    reg: str = setting("none", group="optimisation", help="a registered regulariser (e.g. l2-sp, fea-map, afd): "
                       "loss = CE + reg_lambda * R")
    reg_lambda: float = setting(0.01, low=0, group="optimisation", help="the regulariser's weight")
    reg_options: dict = setting({}, group="optimisation", help="the regulariser's options, e.g. "
                                "layers=layer4.1.conv2")
    # --- schedule
    epochs: int = setting(10, low=1, group="schedule", help="how many epochs to train")
    scheduler: str = setting("cosine", choices=SCHEDULERS, group="schedule", help="the learning-rate schedule: "
                             + ", ".join(SCHEDULERS))
    step_size: int = setting(30, low=1, group="schedule", help="step: epochs between decays")
    gamma: float = setting(0.1, above=0, group="schedule", help="step, multistep: the decay factor")
    milestones: list[int] = setting([], low=1, group="schedule", help="multistep: the epochs where the lr decays")
    halve_every: int = setting(25, low=1, group="schedule", help="halving: lr *= 0.5 every N epochs")
    # --- freezing
    unfreeze: dict[str, int] = setting({}, low=1, group="freezing", help="group=first epoch it trains (frozen "
                                       "before), e.g. head=1,layer4=3,all=5; empty: everything from epoch 1")
    train_bn: bool = setting(True, group="freezing", help="BatchNorm layers keep training while their block is frozen")
    # --- augmentation
    augment: list[str] | None = setting(None, choices=AUGMENTATIONS, group="augmentation", help="training "
                                        "augmentations, from " + ", ".join(AUGMENTATIONS) + " (default: the "
                                        "dataset's); none for none")
    crop_padding: int = setting(4, low=0, group="augmentation", help="crop: zero padding before the random crop")
    cutout: int = setting(16, low=0, group="augmentation", help="cutout: the side of the zeroed square (pixels)")
    rotation: float = setting(45.0, low=0, high=180, group="augmentation", help="rotate: the largest angle (degrees)")
    jitter: float = setting(0.4, low=0, group="augmentation", help="jitter: brightness, contrast and saturation "
                            "strength (hue: a quarter of it)")
    rrc_scale: float = setting(0.08, above=0, high=1, group="augmentation", help="rrc: the smallest area kept by "
                               "the random resized crop (a fraction)")
    # --- run folder
    out: str = setting("runs/xviz", group="run folder", help="the run folder: checkpoints, best.pt, last.pt, "
                       "history, the split of an imagefolder dataset")
    keep: int = setting(3, low=1, group="run folder", help="how many newest epoch checkpoints are kept beside best.pt")
    seed: int = setting(0, low=0, high=SEED_MAX, group="run folder", help="the seed of every random draw "
                        "(initialisation, order, augmentation)")
    # --- hardware
    device: str = setting("auto", group="hardware", help="auto (CUDA when available), cpu, cuda or cuda:N")
    amp: str = setting("auto", choices=("auto", "off"), group="hardware", help="mixed precision: auto (bf16/fp16 "
                       "on CUDA) or off")
    channels_last: str = setting("auto", choices=("auto", "on", "off"), group="hardware", help="channels-last "
                                 "memory format: auto (on CUDA), on or off")
    workers: int = setting(0, low=0, group="hardware", help="DataLoader worker processes decoding images")
    sync_bn: bool = setting(False, group="hardware", help="several processes: BatchNorm statistics over all "
                            "processes' batches together")

    def validate(self) -> "TrainConfig":
        """Check every setting against its rule (type, range, choices); values are normalised in place
        (``lr = 1`` -> ``1.0``, ``augment = "flip"`` -> ``["flip"]``). Raises a one-line XvizError."""
        for name, rule in RULES.items():
            setattr(self, name, rule.check(name, getattr(self, name)))
        path, sep, factory = self.model.rpartition(":")
        if sep and path.endswith(".py") and factory.isidentifier():  # a model file: found from any folder later
            self.model = f"{Path(path).expanduser().resolve()}:{factory}"
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def arch_options(self) -> dict:
        """The options the model is built with (stored in checkpoints)."""
        return {**self.model_options, **({"head": self.head} if self.head else {})}


_ANNOTATION = re.compile(r"^(?P<kind>int|float|bool|str|list|dict)(?:\[(?:str, )?(?P<item>int|float|str)\])?"
                         r"(?P<optional> \| None)?$")
_KINDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "text"}


def _shown(value) -> str:
    """``value`` as it would be written in a recipe (TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_shown, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_shown(v)}" for k, v in value.items()) + "}"
    return repr(value)


@dataclass(frozen=True)
class Rule:
    """What one setting accepts. ``kind`` is int, float, bool, str, list or dict; ``item`` the type of a
    list's items or a table's values (None: anything, for options passed on to a plugin)."""

    kind: str
    item: str | None = None
    optional: bool = False
    low: float | None = None
    high: float | None = None
    above: float | None = None
    choices: tuple = ()

    @classmethod
    def of(cls, f: dataclasses.Field) -> "Rule":
        match = _ANNOTATION.match(str(f.type))
        if match is None:  # pragma: no cover - a new field with an annotation this parser does not know
            raise TypeError(f"TrainConfig.{f.name}: annotate it as int, float, bool, str, list[...] or dict[...]")
        return cls(match["kind"], match["item"], bool(match["optional"]), **f.metadata.get("rule", {}))

    def check(self, name: str, value):
        """``value`` in this setting's type, or an XvizError naming the setting and what it accepts."""
        if value is None and self.optional:
            return None
        if self.kind == "list":
            if isinstance(value, str):  # one name, or names separated by commas as on the command line
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                raise XvizError(f"`{name} = {_shown(value)}` must be a list, e.g. {name} = "
                                f"{_shown([1, 2] if self.item == 'int' else ['a', 'b'])}")
            return [self._scalar(name, v, self.item, f"{name} = {_shown(value)}") for v in value]
        if self.kind == "dict":
            if not isinstance(value, dict):
                raise XvizError(f"`{name} = {_shown(value)}` must be a table of name = value, e.g. "
                                f"--{name.replace('_', '-')} a=1,b=2 or [{name}] in a recipe")
            return {str(k): self._scalar(f"{name}.{k}", v, self.item) for k, v in value.items()}
        return self._scalar(name, value, self.kind)

    def _scalar(self, name: str, value, kind: str | None, whole: str | None = None):
        shown = whole or f"{name} = {_shown(value)}"
        if kind is None:
            return value
        if kind == "bool":
            ok = isinstance(value, bool)
        elif kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok and not math.isfinite(value):
                raise XvizError(f"`{shown}` must be a finite number")
            value = float(value) if ok else value
        else:
            ok = isinstance(value, str)
        if not ok:
            what = _KINDS[kind] + (" or none" if self.optional and not whole else "")
            raise XvizError(f"`{shown}` must be {what}" if not whole else f"`{shown}`: each item must be {what}")
        if self.choices and value not in self.choices:
            raise XvizError(f"unknown {name.split('.')[0]} `{value}`: choose {', '.join(self.choices)}")
        if kind in ("int", "float"):
            low_ok = (self.low is None or value >= self.low) and (self.above is None or value > self.above)
            if not low_ok or (self.high is not None and value > self.high):
                raise XvizError(f"`{shown}` must be {self._range()}")
        return value

    def _range(self) -> str:
        def num(x):
            return str(int(x)) if float(x).is_integer() else f"{x:g}"

        low = f"above {num(self.above)}" if self.above is not None else \
            f"at least {num(self.low)}" if self.low is not None else ""
        if self.high is None:
            return low
        if self.low is not None:
            return f"between {num(self.low)} and {num(self.high)}"
        return f"{low} and at most {num(self.high)}" if low else f"at most {num(self.high)}"

    def parse(self, name: str, text: str):
        """A command-line value (text) in this setting's type; the same checks and messages as a recipe."""
        if self.kind == "list":
            items = [v.strip() for v in text.split(",") if v.strip() and v.strip().lower() != "none"]
            return self.check(name, [_number(v, self.item) for v in items])
        if self.kind == "dict":
            return self.check(name, parse_groups(text, f"--{name.replace('_', '-')}"))
        if self.optional and text.strip().lower() == "none":
            return None
        if self.kind == "bool" and text.strip().lower() in ("true", "false"):
            return self.check(name, text.strip().lower() == "true")
        return self.check(name, _number(text.strip(), self.kind))


def _number(text: str, kind: str | None):
    """``text`` as an int or float when it reads as one and ``kind`` is numeric; else unchanged."""
    if kind not in ("int", "float"):
        return text
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            continue
    return text


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
RULES = {name: Rule.of(f) for name, f in FIELDS.items()}


def parse_flag(name: str, text: str):
    """The command-line value ``--NAME text`` of setting ``name``, checked like a recipe's."""
    return RULES[name].parse(name, text)


def recipe_path(name_or_path: str) -> Path:
    """A recipe by name (``xviz/recipes/<name>.toml``) or by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise XvizError(f"recipe `{path}` does not exist")
        return path
    bundled = RECIPES / f"{name_or_path}.toml"
    if not bundled.is_file():
        names = sorted(p.stem for p in RECIPES.glob("*.toml"))
        close = difflib.get_close_matches(name_or_path, names, n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(f'`{c}`' for c in close)}? " if close else ""
        raise XvizError(f"unknown recipe `{name_or_path}`: {hint}`xviz recipes` lists them")
    return bundled


def read_recipe(name_or_path: str) -> dict:
    path = recipe_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise XvizError(f"recipe `{path}` is not valid TOML: {exc}") from None
    data.pop("description", None)
    return check_keys(data, str(path))


def check_keys(values: dict, where: str) -> dict:
    """``values`` unchanged, or an error naming a key that is not a config field."""
    for key in values:
        if key not in FIELDS:
            close = difflib.get_close_matches(key, FIELDS, n=1, cutoff=0.6)
            hint = f" (did you mean `{close[0]}`?)" if close else ""
            raise XvizError(f"{where}: unknown setting `{key}`{hint}")
    return values


def make_config(recipe: str | None = None, **overrides) -> TrainConfig:
    """A validated config: defaults, then the recipe's values, then ``overrides`` (None = not given)."""
    values = read_recipe(recipe) if recipe else {}
    values.update({k: v for k, v in check_keys(overrides, "command line").items() if v is not None})
    return TrainConfig(**values).validate()


def parse_groups(text: str, what: str) -> dict:
    """``"head=1,all=51"`` -> ``{"head": 1, "all": 51}``: whole numbers as int, other numbers as
    float, anything else as text."""
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise XvizError(f"`{what} {text}`: write name=value pairs, e.g. head=1,all=51")
        value = value.strip()
        try:
            number = float(value)
            out[name.strip()] = int(number) if number.is_integer() and "." not in value else number
        except ValueError:
            out[name.strip()] = value
    return out
