"""Model names and checkpoints -> a module with its preprocessing and class names.

Plugins register :class:`xviz.specs.ModelSpec` through ``xviz_register_models``. :func:`load_model` resolves
``--model NAME --weights DEFAULT|none|PATH`` or ``--checkpoint PATH`` into a :class:`LoadedModel`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from xviz import registry
from xviz.checkpoint import read_checkpoint
from xviz.errors import XvizError
from xviz.images import Preprocessing
from xviz.specs import ModelSpec


@dataclass
class LoadedModel:
    """A ready-to-explain model: the module, how to preprocess its input, and its class names."""

    module: nn.Module
    name: str
    class_names: list[str]
    preprocessing: Preprocessing
    source: str = ""  # where the weights came from, for messages and provenance
    checkpoint: dict = field(default_factory=dict, repr=False)  # metadata (history, config), no weights

    def to(self, device) -> "LoadedModel":
        self.module.to(device)
        return self


def check_finite_outputs(outputs: torch.Tensor, model: LoadedModel | nn.Module) -> torch.Tensor:
    """``outputs`` (the model's scores) unchanged when every value is finite; otherwise a one-line
    XvizError naming where the model came from: NaN scores have no predicted class to explain or rank."""
    if bool(torch.isfinite(outputs).all()):
        return outputs
    where = f"the model from `{model.source}`" if isinstance(model, LoadedModel) else f"model `{type(model).__name__}`"
    raise XvizError(f"{where} gives NaN or infinite outputs, so nothing it predicts can be explained or scored "
                    "(a training run that diverged?): pick another checkpoint or retrain")


def load_model(name: str | None = None, *, weights: str = "DEFAULT", checkpoint: str | Path | None = None,
               pm=None) -> LoadedModel:
    """Resolve a model by name and weights, or from an xviz checkpoint.

    ``weights``: ``"DEFAULT"`` (or another named set) for the model's pretrained weights,
    ``"none"`` for random initialisation, or a path to a checkpoint / state dict of this
    architecture.
    """
    loaded = _load(name, "none" if weights is None else str(weights), checkpoint, registry.models(pm))
    loaded.module.eval()
    return loaded


def _load(name, weights, checkpoint, specs) -> LoadedModel:
    if checkpoint is not None:
        return load_checkpoint(checkpoint, specs)
    if name is None:
        raise XvizError("no model given: use --model NAME (see `xviz models`) or --checkpoint PATH")
    spec = registry.lookup(specs, name, "model", "xviz models")
    if weights.lower() == "none":
        return LoadedModel(spec.build(len(spec.class_names)), spec.name, list(spec.class_names), spec.preprocessing,
                           "random initialisation")
    if is_weights_file(weights):
        return _load_weights_file(spec, Path(weights), specs)
    return pretrained(spec, weights)


def is_weights_file(weights: str) -> bool:
    """Whether ``--weights`` names a file (by its suffix or because it exists) rather than a weights name."""
    return Path(weights).suffix in (".pt", ".pth", ".ckpt", ".bin") or Path(weights).exists()


def pretrained(spec: ModelSpec, weights: str) -> LoadedModel:
    """``spec``'s named pretrained weights, or an error when it has none."""
    if spec.pretrained is None:
        raise XvizError(f"model `{spec.name}` has no pretrained weights `{weights}`: use --weights none or a "
                        "checkpoint PATH")
    return spec.pretrained(weights)


def load_checkpoint(path: str | Path, specs: dict[str, ModelSpec] | None = None) -> LoadedModel:
    """Rebuild the model an xviz checkpoint describes and load its weights."""
    specs = specs if specs is not None else registry.models()
    data = read_checkpoint(path)
    arch = data.get("arch")
    if arch is None:
        raise XvizError(
            f"`{path}` is a bare state dict with no architecture: use --model NAME --weights {path}"
        )
    if arch in getattr(specs, "clashes", {}):
        raise XvizError(specs.clash_message(arch))
    if arch not in specs:
        raise XvizError(f"checkpoint `{path}` is for model `{arch}`, which no installed plugin provides "
                        "(`xviz models` lists them)")
    loaded = _assemble(specs[arch], data, Path(path))
    loaded.module.eval()
    return loaded


def _load_weights_file(spec: ModelSpec, path: Path, specs) -> LoadedModel:
    data = read_checkpoint(path)
    arch = data.get("arch")
    if arch is not None and arch != spec.name:
        raise XvizError(f"`{path}` holds weights of model `{arch}`, not `{spec.name}`: use --model {arch} "
                        f"or --checkpoint {path}")
    return _assemble(spec, data, path)


def _assemble(spec: ModelSpec, data: dict, path: Path) -> LoadedModel:
    class_names = list(data.get("class_names") or spec.class_names)
    state = data["state_dict"]
    try:
        module = spec.build(len(class_names), **dict(data.get("arch_options") or {}))
    except TypeError as exc:
        raise XvizError(f"checkpoint `{path}`: field `arch_options` {dict(data['arch_options'])} does not fit model "
                        f"`{spec.name}` ({exc})") from None
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel/DDP
    own = module.state_dict()
    shape_errors = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    heads = [k for k in shape_errors if own[k].dim() and state[k].dim() and
             own[k].shape[0] == len(class_names) != state[k].shape[0]]  # the class count is what differs
    outputs = {state[k].shape[0] for k in heads}
    if data.get("class_names") and len(outputs) == 1:
        key = heads[0]
        raise XvizError(f"checkpoint `{path}`: field `class_names` lists {len(class_names)} names but the weights "
                        f"give {outputs.pop()} outputs (`{key}` has shape {'x'.join(map(str, state[key].shape))}): "
                        "re-save it with one name per output")
    result = module.load_state_dict({k: v for k, v in state.items() if k not in shape_errors}, strict=False)
    if result.missing_keys or result.unexpected_keys or shape_errors:
        missing = [k for k in result.missing_keys if k not in shape_errors]
        raise XvizError(_mismatch_message(spec.name, path, missing, result.unexpected_keys, shape_errors))
    pre = data.get("preprocessing")
    preprocessing = Preprocessing.from_dict(pre) if pre else spec.preprocessing
    meta = {k: v for k, v in data.items() if k != "state_dict"}
    return LoadedModel(module, spec.name, class_names, preprocessing, str(path), meta)


def _mismatch_message(name: str, path: Path, missing, unexpected, shape_errors) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. `{missing[0]}`)")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. `{unexpected[0]}`)")
    if shape_errors:
        parts.append(f"{len(shape_errors)} of another shape (e.g. `{shape_errors[0]}`)")
    return (f"the weights in `{path}` do not fit model `{name}`: {', '.join(parts)}; "
            "they belong to another architecture: pick the matching --model")


def torch_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without CUDA is an error."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    kind, _, index = name.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise XvizError(f"unknown device `{name}`: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise XvizError("`--device cuda` was asked for but no CUDA GPU is available: use --device cpu or auto")
    if index and int(index) >= torch.cuda.device_count():
        raise XvizError(f"`--device {name}`: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


@dataclass
class TransferReport:
    """What :func:`transfer_state` did with each tensor."""

    loaded: list[str]  # copied from the source
    skipped: list[str]  # in the source but unused: no such layer here, another shape, or excluded
    initialised: list[str]  # here but not in the source (or not copied): keep their fresh initialisation
    reasons: dict[str, str] = field(default_factory=dict)  # skipped name -> why

    def summary(self, show: int = 4) -> str:
        def names(items, why=False):
            more = f", ... ({len(items) - show} more)" if len(items) > show else ""
            return ", ".join(f"{n} ({self.reasons[n]})" if why else n for n in items[:show]) + more

        parts = [f"loaded {len(self.loaded)} tensors"]
        if self.skipped:
            parts.append(f"skipped {len(self.skipped)}: {names(self.skipped, why=True)}")
        if self.initialised:
            parts.append(f"newly initialised {len(self.initialised)}: {names(self.initialised)}")
        return "; ".join(parts)


def transfer_state(module: nn.Module, state: dict, exclude: tuple[str, ...] = ()) -> TransferReport:
    """Copy into ``module`` every tensor of ``state`` whose name and shape match (a checkpoint with
    another head, class count or input size); names starting with an ``exclude`` prefix are skipped."""
    own = module.state_dict()
    state = {k.removeprefix("module."): v for k, v in state.items()}
    take, skipped, reasons = {}, [], {}
    for name, tensor in state.items():
        if name.startswith(exclude) if exclude else False:
            reasons[name] = "excluded"
        elif name not in own:
            reasons[name] = "no such layer"
        elif own[name].shape != tensor.shape:
            reasons[name] = f"shape {tuple(tensor.shape)} vs {tuple(own[name].shape)}"
        else:
            take[name] = tensor
            continue
        skipped.append(name)
    module.load_state_dict(take, strict=False)
    initialised = [n for n in own if n not in take]
    return TransferReport(list(take), skipped, initialised, reasons)
