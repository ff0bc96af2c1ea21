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
               pm=None, num_classes: int | None = None, classes=None, options: dict | None = None,
               size: int | None = None, resize: int | None = None, mean=None, std=None) -> LoadedModel:
    """Resolve a model by name and weights, or from an xviz checkpoint.

    ``name``: a registered model (``xviz models``), any torchvision classifier, ``timm:NAME``, or
    ``path/to/file.py:factory`` (a callable returning an ``nn.Module``, called with ``options``).
    ``weights``: ``"DEFAULT"`` (or another named set) for the model's pretrained weights, ``"none"``
    for random initialisation, or a path to an xviz checkpoint or a state dict (plain, wrapped in
    ``{"state_dict": ...}`` or ``{"model": ...}``, ``module.`` prefixes allowed). The classifier's size
    is read from the file (or ``num_classes``) and the head built to match. ``classes``: class names,
    a list or a file (one per line, or a JSON list). ``size``/``resize``/``mean``/``std`` override the
    preprocessing (``size``: the square crop; alone it also sets the resize).
    """
    weights = "none" if weights is None else str(weights)
    if name and is_factory_reference(name):
        loaded = _from_factory(name, weights, dict(options or {}), num_classes)
    else:
        if options:
            raise XvizError("--model-option applies to a model from a file (path/to/file.py:factory)")
        loaded = _load(name, weights, checkpoint, registry.models(pm), num_classes, pm)
    if classes is not None:
        loaded.class_names = read_class_names(classes, len(loaded.class_names))
    loaded.preprocessing = override_preprocessing(loaded.preprocessing, size=size, resize=resize, mean=mean, std=std)
    loaded.module.eval()
    return loaded


def _load(name, weights, checkpoint, specs, num_classes=None, pm=None) -> LoadedModel:
    if checkpoint is not None:
        return load_checkpoint(checkpoint, specs)
    if name is None:
        raise XvizError("no model given: use --model NAME (see `xviz models`) or --checkpoint PATH")
    spec = resolve_spec(name, specs, pm)
    if weights.lower() == "none":
        count = num_classes or len(spec.class_names)
        names = list(spec.class_names) if count == len(spec.class_names) else [str(i) for i in range(count)]
        return LoadedModel(spec.build(count), spec.name, names, spec.preprocessing, "random initialisation")
    if is_weights_file(weights):
        return _load_weights_file(spec, Path(weights), specs, num_classes)
    if num_classes is not None and num_classes != len(spec.class_names):
        raise XvizError(f"`--num-classes {num_classes}` needs weights of that size: give --weights PATH or --weights none")
    return pretrained(spec, weights)


def resolve_spec(name: str, specs: dict[str, ModelSpec], pm=None) -> ModelSpec:
    """The registered model ``name``, a ``path/to/file.py:factory`` (:func:`factory_spec`), else what a plugin's
    ``xviz_resolve_model`` makes of it (every torchvision classifier, ``timm:NAME``), else an unknown-model error with the closest names."""
    if name in specs or name in getattr(specs, "clashes", {}):
        return registry.lookup(specs, name, "model", "xviz models")
    if is_factory_reference(name):
        return factory_spec(name)
    found = (pm or registry.default_plugin_manager()).hook.xviz_resolve_model(name=name)
    if found is not None:
        return found
    return registry.lookup(specs, name, "model", "xviz models")


def is_factory_reference(name: str) -> bool:
    """Whether ``--model`` names a Python file and a callable in it (``path/to/file.py:factory``)."""
    path, sep, attr = name.rpartition(":")
    return bool(sep) and path.endswith(".py") and attr.isidentifier()


def _from_factory(reference: str, weights: str, options: dict, num_classes: int | None) -> LoadedModel:
    """Call ``factory(**options)`` from a user's file; check it makes a classifier; load ``weights``."""
    attr = reference.rpartition(":")[2]
    module = factory_module(reference, options, num_classes)
    preprocessing = IMAGENET_PREPROCESSING
    source = f"as {attr}() made it"  # DEFAULT and none: the factory decides (random, or weights it loads itself)
    if weights.lower() not in ("none", "default"):
        state = _unwrap_state(read_checkpoint(weights))
        _load_state(module, state, reference, Path(weights))
        source = weights
    count = output_classes(module, preprocessing, reference)
    return LoadedModel(module, reference, [str(i) for i in range(count)], preprocessing, source)


def factory_module(reference: str, options: dict, num_classes: int | None = None, resize_head: bool = False):
    """``factory(**options)`` from the file ``reference`` names, checked to be an ``nn.Module``. ``num_classes``
    is passed on when the factory takes it (or ``**kwargs``); with ``resize_head`` a factory that does not
    take it gets its classifier replaced (:func:`replace_head`)."""
    import importlib.util
    import inspect

    path, _, attr = reference.rpartition(":")
    if not Path(path).is_file():
        raise XvizError(f"model file `{path}` does not exist: give path/to/file.py:factory")
    spec = importlib.util.spec_from_file_location(f"xviz_user_model_{Path(path).stem}", path)
    module_file = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module_file)
    except Exception as exc:
        raise XvizError(f"importing `{path}` failed ({type(exc).__name__}: {exc}): fix the file") from None
    factory = getattr(module_file, attr, None)
    if not callable(factory):
        raise XvizError(f"`{path}` has no callable `{attr}`: give path/to/file.py:FACTORY, a function or class "
                        "returning an nn.Module")
    options = dict(options)
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        parameters = {}
    takes = "num_classes" in parameters or any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    if num_classes is not None and (takes or not resize_head):
        options.setdefault("num_classes", num_classes)
    try:
        module = factory(**options)
    except Exception as exc:
        raise XvizError(f"`{reference}({', '.join(f'{k}={v!r}' for k, v in options.items())})` raised "
                        f"{type(exc).__name__}: {exc}") from None
    if not isinstance(module, nn.Module):
        raise XvizError(f"`{reference}` returned a {type(module).__name__}, not a torch.nn.Module")
    if resize_head and num_classes is not None:
        replace_head(module, num_classes, reference)
    return module


def replace_head(module: nn.Module, num_classes: int, name: str) -> nn.Module:
    """``module`` scoring ``num_classes`` classes: its last ``nn.Linear`` giving the current class count is
    replaced by a new one (same inputs, ``num_classes`` outputs); unchanged when the count already fits."""
    count = output_classes(module, IMAGENET_PREPROCESSING, name)
    if count == num_classes:
        return module
    found = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear) and m.out_features == count]
    if not found:
        raise XvizError(f"model `{name}` gives {count} outputs and xviz finds no nn.Linear layer giving them to "
                        f"resize for {num_classes} classes: give the factory a num_classes argument")
    head, layer = found[-1]
    parent = module.get_submodule(head.rpartition(".")[0]) if "." in head else module
    new = nn.Linear(layer.in_features, num_classes, bias=layer.bias is not None)
    setattr(parent, head.rpartition(".")[2], new.to(layer.weight.device, layer.weight.dtype))
    return module


def factory_spec(reference: str) -> ModelSpec:
    """A :class:`ModelSpec` for ``path/to/file.py:factory``: ``build(num_classes, **options)`` calls the
    factory and sizes its head; ImageNet preprocessing; no named pretrained weights (the factory's own)."""
    def build(num_classes: int, **options):
        return factory_module(reference, options, num_classes, resize_head=True)

    return ModelSpec(reference, build, IMAGENET_PREPROCESSING, (), summary=f"the model {reference} makes",
                     family="file", num_classes=0)


def output_classes(module: nn.Module, preprocessing: Preprocessing, name: str) -> int:
    """How many classes ``module`` scores: its output on one blank input must be (1, classes) logits."""
    from xviz.capture import first_output, preserved_state

    side = preprocessing.crop or preprocessing.resize or 224
    reference = next((p for p in module.parameters() if p.is_floating_point()), None)
    example = torch.zeros(1, 3, side, side, device=reference.device if reference is not None else "cpu")
    try:
        with torch.no_grad(), preserved_state(module):
            module.eval()
            out = first_output(module(example))
    except Exception as exc:
        raise XvizError(f"model `{name}` failed on a (1, 3, {side}, {side}) input ({type(exc).__name__}: {exc}): "
                        "it must take (N, 3, H, W) images (set the size with --size)") from None
    if not torch.is_tensor(out) or out.dim() != 2:
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise XvizError(f"model `{name}` returns {shape}, not (N, classes) logits: xviz explains classifiers")
    return int(out.shape[1])


IMAGENET_PREPROCESSING = Preprocessing(256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def override_preprocessing(pre: Preprocessing, size=None, resize=None, mean=None, std=None) -> Preprocessing:
    """``pre`` with the given fields replaced; ``size`` sets the crop and, without ``resize``, the resize too."""
    from dataclasses import replace

    changes = {}
    for flag, value in (("size", size), ("resize", resize)):
        if value is not None and int(value) < 1:
            raise XvizError(f"`--{flag} {value}` must be a positive number of pixels")
    if size is not None:
        changes.update(crop=int(size), resize=int(size))
    if resize is not None:
        changes["resize"] = int(resize)
    for flag, value in (("mean", mean), ("std", std)):
        if value is not None:
            values = _floats(value, flag)
            if flag == "std" and any(v <= 0 for v in values):
                raise XvizError(f"`--std {value}` must be positive")
            changes[flag] = values
    return replace(pre, **changes) if changes else pre


def _floats(value, flag: str) -> tuple[float, ...]:
    parts = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    try:
        values = tuple(float(v) for v in parts)
    except ValueError:
        raise XvizError(f"`--{flag} {value}` must be three numbers, e.g. 0.485,0.456,0.406") from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise XvizError(f"`--{flag} {value}` must be one or three numbers (one per RGB channel)")
    return values


def read_class_names(classes, count: int) -> list[str]:
    """Class names from a list or a file (one per line, or a JSON list); their number must be ``count``."""
    import json

    source = "the class names"
    if isinstance(classes, (str, Path)):
        path, source = Path(classes), f"`{classes}`"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise XvizError(f"cannot read the classes file `{path}` ({exc.strerror or exc}): check the path") from None
        if text.lstrip().startswith("["):
            try:
                names = json.loads(text)
            except json.JSONDecodeError as exc:
                raise XvizError(f"`{path}` is not valid JSON ({exc.msg}, line {exc.lineno}): give a JSON list "
                                "or one class name per line") from None
        else:
            names = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        names = list(classes)
    names = [str(n) for n in names]
    if len(names) != count:
        raise XvizError(f"{source} {'names' if source.startswith('`') else 'are'} {len(names)} classes but the model "
                        f"has {count}: give one name per class")
    return names


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
    try:
        spec = resolve_spec(arch, specs)  # registered, torchvision, timm:NAME, file.py:factory
    except XvizError as exc:
        raise XvizError(f"checkpoint `{path}` is for model `{arch}`, which xviz cannot build here ({exc}); "
                        "`xviz models` lists the installed ones") from None
    loaded = _assemble(spec, data, Path(path))
    loaded.module.eval()
    return loaded


def _load_weights_file(spec: ModelSpec, path: Path, specs, num_classes: int | None = None) -> LoadedModel:
    data = read_checkpoint(path)
    arch = data.get("arch")
    if arch is not None and arch != spec.name:
        raise XvizError(f"`{path}` holds weights of model `{arch}`, not `{spec.name}`: use --model {arch} "
                        f"or --checkpoint {path}")
    if arch is None:
        data = {**data, "state_dict": _unwrap_state(data)}
        if num_classes is None:
            num_classes = _classes_in_state(spec, data["state_dict"])
    return _assemble(spec, data, path, num_classes)


def _unwrap_state(data: dict) -> dict:
    """The state dict inside ``{"state_dict": ...}`` / ``{"model": ...}``, without ``module.`` prefixes."""
    state = data.get("state_dict", data)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not any(torch.is_tensor(v) for v in state.values()):
        raise XvizError("the weights file holds no state dict (expected tensors by name, or "
                        "{'state_dict': ...} / {'model': ...})")
    return {k.removeprefix("module."): v for k, v in state.items() if torch.is_tensor(v)}


def _classes_in_state(spec: ModelSpec, state: dict) -> int | None:
    """The class count the weights were trained for: the output size of the tensors that differ from
    ``spec``'s default model only in their first dimension, where that is the default class count."""
    default = len(spec.class_names)
    own = spec.build(default).state_dict()
    sizes = {v.shape[0] for k, v in state.items() if k in own and own[k].shape != v.shape and v.dim() >= 1
             and own[k].shape[0] == default and own[k].shape[1:] == v.shape[1:]}
    return sizes.pop() if len(sizes) == 1 else None


def _assemble(spec: ModelSpec, data: dict, path: Path, num_classes: int | None = None) -> LoadedModel:
    class_names = list(data.get("class_names") or [])
    count = num_classes or len(class_names) or len(spec.class_names)
    if not class_names:
        class_names = list(spec.class_names) if count == len(spec.class_names) else [str(i) for i in range(count)]
    try:
        module = spec.build(count, **dict(data.get("arch_options") or {}))
    except TypeError as exc:
        raise XvizError(f"checkpoint `{path}`: field `arch_options` {dict(data['arch_options'])} does not fit model "
                        f"`{spec.name}` ({exc})") from None
    _load_state(module, data["state_dict"], spec.name, path, class_names if data.get("class_names") else None)
    pre = data.get("preprocessing")
    preprocessing = Preprocessing.from_dict(pre) if pre else spec.preprocessing
    meta = {k: v for k, v in data.items() if k != "state_dict"}
    return LoadedModel(module, spec.name, class_names, preprocessing, str(path), meta)


def _load_state(module: nn.Module, state: dict, name: str, path: Path, named_classes=None) -> None:
    """Load ``state`` into ``module`` strictly; a mismatch is one line naming a tensor (or, for a
    checkpoint that names its classes, the field ``class_names`` when only the class count differs)."""
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel/DDP
    own = module.state_dict()
    shape_errors = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if named_classes is not None:
        heads = [k for k in shape_errors if own[k].dim() and state[k].dim() and
                 own[k].shape[0] == len(named_classes) != state[k].shape[0]]  # the class count is what differs
        outputs = {state[k].shape[0] for k in heads}
        if len(outputs) == 1:
            key = heads[0]
            raise XvizError(f"checkpoint `{path}`: field `class_names` lists {len(named_classes)} names but the "
                            f"weights give {outputs.pop()} outputs (`{key}` has shape "
                            f"{'x'.join(map(str, state[key].shape))}): re-save it with one name per output")
    if shape_errors:
        k = shape_errors[0]
        more = f" (and {len(shape_errors) - 1} more)" if len(shape_errors) > 1 else ""
        raise XvizError(f"the weights in `{path}` do not fit model `{name}`: tensor `{k}` has shape "
                        f"{tuple(state[k].shape)} in the file but {tuple(own[k].shape)} in the model{more}; "
                        "pick the matching --model, or set the class count with --num-classes")
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise XvizError(_mismatch_message(name, path, result))


def _mismatch_message(name: str, path: Path, result) -> str:
    parts = []
    if result.missing_keys:
        parts.append(f"{len(result.missing_keys)} missing (e.g. `{result.missing_keys[0]}`)")
    if result.unexpected_keys:
        parts.append(f"{len(result.unexpected_keys)} unexpected (e.g. `{result.unexpected_keys[0]}`)")
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
