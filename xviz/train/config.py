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


@dataclass
class TrainConfig:
    """Every knob of ``xviz train``; see ``docs/training.md`` for each one's meaning."""

    model: str = "xviz-demo"
    weights: str = "none"  # none | DEFAULT (pretrained) | PATH: transfer the layers that fit
    head: str | None = None  # linear | concat (torchvision backbones)
    model_options: dict = field(default_factory=dict)  # architecture options, e.g. {attention = "after"}
    transfer: str = "all"  # what to take from `weights`: all | backbone (everything but the head)
    transfer_exclude: list = field(default_factory=list)  # module names whose weights are not taken
    dataset: str = "synthetic"
    data: str | None = None
    dataset_options: dict = field(default_factory=dict)  # e.g. {size = 512} for synthetic
    image_size: int | None = None  # train/test at this input size instead of the dataset's own
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    scheduler: str = "cosine"
    step_size: int = 30  # step: epochs between decays
    gamma: float = 0.1  # step, multistep: decay factor
    milestones: list = field(default_factory=list)  # multistep: epochs where lr decays
    halve_every: int = 25  # halving: lr *= 0.5 every N epochs
    unfreeze: dict = field(default_factory=dict)  # group -> first trainable epoch; empty: all from epoch 1
    lr_mult: dict = field(default_factory=dict)  # group -> lr multiplier
    train_bn: bool = True  # BatchNorm layers keep training while their block is frozen
    sync_bn: bool = False  # several processes: BatchNorm statistics over all processes' batches together
    augment: list | None = None  # None: the dataset's default
    crop_padding: int = 4
    cutout: int = 16
    rotation: float = 45.0
    jitter: float = 0.4
    rrc_scale: float = 0.08
    label_smoothing: float = 0.0
    reg: str = "none"  # a registered regulariser (`xviz train --help`; e.g. l2-sp, fea-map, afd): loss = CE + reg_lambda * R
    reg_lambda: float = 0.01
    reg_options: dict = field(default_factory=dict)  # options of the regulariser, e.g. {layers = "layer4.1.conv2"}
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # auto (bf16/fp16 on CUDA) | off
    channels_last: str = "auto"  # auto (on CUDA) | on | off
    workers: int = 0
    keep: int = 3  # newest checkpoints kept beside best.pt
    out: str = "runs/xviz"

    def validate(self) -> "TrainConfig":
        def need(ok, message):
            if not ok:
                raise XvizError(message)

        need(self.epochs >= 1, f"`epochs = {self.epochs}` must be at least 1")
        need(self.batch_size >= 1, f"`batch_size = {self.batch_size}` must be at least 1")
        need(self.lr > 0, f"`lr = {self.lr}` must be positive")
        need(self.optimizer in OPTIMIZERS, f"unknown optimizer `{self.optimizer}`: choose {', '.join(OPTIMIZERS)}")
        need(self.scheduler in SCHEDULERS, f"unknown schedule `{self.scheduler}`: choose {', '.join(SCHEDULERS)}")
        need(self.transfer in ("all", "backbone"), f"`transfer = {self.transfer}`: choose all or backbone")
        need(self.reg_lambda >= 0, f"`reg_lambda = {self.reg_lambda}` must be >= 0")
        need(self.keep >= 1, f"`keep = {self.keep}` must be at least 1")
        for group, epoch in self.unfreeze.items():
            need(isinstance(epoch, int) and epoch >= 1, f"unfreeze `{group}` at epoch `{epoch}`: epochs start at 1")
        for group, mult in self.lr_mult.items():
            need(isinstance(mult, (int, float)) and mult >= 0, f"lr_mult `{group}` = `{mult}` must be >= 0")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def arch_options(self) -> dict:
        """The options the model is built with (stored in checkpoints)."""
        return {**self.model_options, **({"head": self.head} if self.head else {})}


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


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
