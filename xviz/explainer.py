"""Resolve model, layer, targets and methods, run one shared pass per batch, return Explanations.

    >>> import xviz
    >>> model = xviz.load_model("xviz-demo")
    >>> gradcam, gradcampp = xviz.explain(model, ["a.png", "b.png"], methods=["gradcam", "gradcampp"])
    >>> gradcampp.maps.shape      # (images, targets, H, W), values in [0, 1]
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from xviz import registry
from xviz.console import did_you_mean
from xviz.errors import XvizError
from xviz.explanation import Explanation, library_versions
from xviz.capture import capture_layers, find_layer, first_output, preserved_state, spatial_layers
from xviz.fast import FP32, Speed, autocast, channels_last_weights, choose_speed, compiled
from xviz.inputs import load_batches, to_pil  # noqa: F401  (to_pil: part of this module's API)
from xviz.methods import Context, Method
from xviz.models import LoadedModel, check_finite_outputs


def resolve_methods(names: Iterable[str | Method], pm=None) -> list[Method]:
    """Method objects for names (``"gradcam"``) or Method instances, in order, without repeats."""
    out: list[Method] = []
    available = None
    for item in names:
        if isinstance(item, Method):
            found = item
        else:
            if available is None:
                available = registry.methods(pm or registry.default_plugin_manager())
            found = registry.lookup(available, item, "method", "xviz methods")
        if found.name not in {m.name for m in out}:
            out.append(found)
    if not out:
        raise XvizError("no method given: use --method NAME (see `xviz methods`)")
    return out


def resolve_layer(model: nn.Module, layer: str | None, example: torch.Tensor, model_name: str | None = None,
                  pm=None, warn: bool = False) -> tuple[str, str]:
    """The target layer's name and how it was chosen: ``"given"``, ``"plugin"`` (the
    ``xviz_default_target_layer`` hook) or ``"last spatial"`` (the last module whose output is
    (N, C, h, w) with h * w > 1)."""
    if layer:
        find_layer(model, layer)
        return layer, "given"
    pm = pm or registry.default_plugin_manager()
    chosen = pm.hook.xviz_default_target_layer(model=model, model_name=model_name)
    if chosen:
        find_layer(model, chosen)
        return chosen, "plugin"
    candidates = spatial_layers(model, example[:1])
    if not candidates:
        raise XvizError("the model has no layer with a spatial output (N, C, h, w): layer methods such as "
                        "GradCAM do not apply to it")
    if warn:
        warnings.warn(f"explaining layer `{candidates[-1][0]}`, the last with a spatial output; pass layer= "
                      "to choose another", stacklevel=3)
    return candidates[-1][0], "last spatial"


def check_targets(target, topk: int, class_names: Sequence[str], num_classes: int) -> int | None:
    """Validate a target request before any work; returns the target's class index (or None)."""
    if topk < 1:
        raise XvizError(f"`--topk {topk}` must be at least 1")
    if target is not None and topk != 1:
        raise XvizError("give either --target or --topk, not both")
    if topk > num_classes:
        raise XvizError(f"`--topk {topk}` exceeds the model's {num_classes} classes")
    return None if target is None else class_index(target, class_names, num_classes)


def resolve_targets(logits: torch.Tensor, target=None, topk: int = 1, class_names: Sequence[str] = ()) -> torch.Tensor:
    """(N, K) class indices: the top-``topk`` classes of each image, or ``target`` (an index or a
    class name) for every image."""
    n, num_classes = logits.shape
    index = check_targets(target, topk, class_names, num_classes)
    if index is None:
        return logits.topk(topk, dim=1).indices
    return torch.full((n, 1), index, dtype=torch.long, device=logits.device)


def class_index(target, class_names: Sequence[str], num_classes: int) -> int:
    """A class given by index (``3``, ``"3"``) or by name (case-insensitive)."""
    if isinstance(target, str) and not target.strip().lstrip("-").isdigit():
        names = list(class_names)
        hits = [i for i, c in enumerate(names) if c == target] or \
            [i for i, c in enumerate(names) if c.lower() == target.lower()]
        if len(hits) > 1:
            raise XvizError(f"class name `{target}` is ambiguous: classes {', '.join(map(str, hits))}; give the index")
        if hits:
            return hits[0]
        raise XvizError(f"unknown class `{target}`: {did_you_mean(target, names)}give a class index 0-{num_classes - 1} or a name "
                        "from `xviz models --classes NAME`")
    index = int(target)
    if not 0 <= index < num_classes:
        raise XvizError(f"class index `{index}` is out of range: the model has classes 0-{num_classes - 1}")
    return index


def normalize_maps(raw: torch.Tensor, size: tuple[int, int], signed: bool = False,
                   value_range: tuple[float, float] | None = None) -> torch.Tensor:
    """(N, K, h, w) -> (N, K, H, W): bilinear upsampling (``align_corners=False``) to ``size``, then per map
    ``(x - min) / (max - min)``, or ``x / max|x|`` when ``signed``. A map constant at its own resolution
    (spread <= 1e-6 of its magnitude, e.g. all zero after the ReLU) becomes 0, not an upsampling artefact.
    With a fixed ``value_range`` ``(lo, hi)`` (see :meth:`Method.display_range`), no per-map scaling:
    ``(x - lo) / (hi - lo)`` clipped to [0, 1], or ``x / max(|lo|, |hi|)`` clipped to [-1, 1] when ``signed``."""
    maps = raw.detach().float()
    n, k, h, w = maps.shape
    if value_range is not None:
        lo, hi = map(float, value_range)
        if (h, w) != tuple(size):
            maps = F.interpolate(maps.reshape(n * k, 1, h, w), size=size, mode="bilinear", align_corners=False)
        maps = maps.reshape(n, k, *size)
        if signed:
            return (maps / max(abs(lo), abs(hi))).clamp(-1.0, 1.0)
        return ((maps - lo) / (hi - lo)).clamp(0.0, 1.0)
    raw_flat = maps.reshape(n, k, -1)
    spread = raw_flat.amax(-1, keepdim=True) - raw_flat.amin(-1, keepdim=True)
    constant = spread <= 1e-6 * raw_flat.abs().amax(-1, keepdim=True)  # also true for all-zero maps
    if (h, w) != tuple(size):
        maps = F.interpolate(maps.reshape(n * k, 1, h, w), size=size, mode="bilinear", align_corners=False)
    flat = maps.reshape(n, k, -1)
    tiny = torch.finfo(flat.dtype).tiny
    if signed:
        scale = flat.abs().amax(-1, keepdim=True)
        flat = torch.where(scale > 0, flat / scale.clamp_min(tiny), torch.zeros_like(flat))
        return flat.clamp(-1.0, 1.0).view(n, k, *size)
    lo, hi = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    flat = torch.where(constant, torch.zeros_like(flat), (flat - lo) / (hi - lo).clamp_min(tiny))
    return flat.clamp(0.0, 1.0).view(n, k, *size)


def layer_list(layer: str | Sequence[str] | None) -> list[str]:
    """Layer names from ``"a"``, ``"a,b"`` or ``["a", "b"]`` (module names never contain a comma), without repeats."""
    if layer is None:
        return []
    parts = layer.split(",") if isinstance(layer, str) else [p for item in layer for p in str(item).split(",")]
    names = [p.strip() for p in parts if p.strip()]
    if not names:
        raise XvizError(f"no layer name in `{layer}`")
    return list(dict.fromkeys(names))


def fuse_layer_maps(raws: Sequence[torch.Tensor], size: tuple[int, int], signed: bool = False) -> torch.Tensor:
    """Several layers' (N, K, h_l, w_l) maps -> one (N, K, H, W): each normalised at its own resolution
    (min-max, or x / max|x| when signed; a constant map is 0), upsampled bilinearly to ``size``, then
    averaged (pytorch-grad-cam's rule; the Explanation's maps min-max normalise the mean again)."""
    fused = None
    for raw in raws:
        own = normalize_maps(raw, tuple(raw.shape[-2:]), signed)
        up = F.interpolate(own.flatten(0, 1)[:, None], size=size, mode="bilinear", align_corners=False)
        up = up.view(*own.shape[:2], *size)
        fused = up if fused is None else fused + up
    return fused / len(raws)


def explain_tensors(model: LoadedModel | nn.Module, inputs: torch.Tensor, methods: Sequence[str | Method] = ("gradcam",),
                    *, layer: str | Sequence[str] | None = None, target=None, topk: int = 1, inputs_names: Sequence[str] = (),
                    pm=None, fast: bool | str | Speed = False, compile: bool = False) -> list[Explanation]:
    """Explain a batch of preprocessed images with each method; one Explanation per method (per layer
    for a method that returns maps of several layers, such as ``attention``).

    All methods share one forward pass and (gradient methods) one ``autograd.grad`` call. The
    model is left exactly as found: modes, ``requires_grad``, no hooks, no graph kept alive.

    ``layer`` may name several layers (``["a", "b"]`` or ``"a,b"``): all are captured in the same
    forward, gradients to all come from the same call, each layer-method computes a map per layer and
    the maps are fused by :func:`fuse_layer_maps` into one Explanation whose ``layer`` is ``"a,b"`` and
    whose ``raw`` is the fused map at input size.

    ``fast``: True (channels_last), ``"bf16"`` or ``"fp16"`` (also autocast): see :mod:`xviz.fast`;
    ``compile``: the forward pass through ``torch.compile``. A method with ``uses_input_gradient`` gets
    the gradient to the inputs from the same pass (``ctx.input_gradients``).
    """
    loaded = model if isinstance(model, LoadedModel) else None
    module = loaded.module if loaded else model
    pm = pm or registry.default_plugin_manager()
    chosen = resolve_methods(methods, pm)
    if inputs.dim() != 4 or inputs.shape[0] == 0:
        raise XvizError(f"inputs must be a non-empty (N, 3, H, W) batch, got shape {tuple(inputs.shape)}")
    if target is not None and not isinstance(target, (int, str)):
        raise XvizError(f"target must be one class index or name for all images, got {type(target).__name__}; "
                        "explain images with different targets in separate calls")
    reference = next((p for p in module.parameters() if p.is_floating_point()), None)
    if reference is not None:
        inputs = inputs.to(device=reference.device, dtype=reference.dtype)
    layer_names = _layers_to_capture(module, layer, inputs, loaded.name if loaded else None, pm) \
        if any(m.uses_layer for m in chosen) else []
    for m in chosen:
        m.check(module, pm)
    speed = fast if isinstance(fast, Speed) else choose_speed(inputs.device, fast, compile)
    with torch.inference_mode(False), torch.enable_grad(), preserved_state(module), \
            channels_last_weights(module, speed.channels_last):
        if inputs.is_inference():
            inputs = inputs.clone()
        if speed.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        if any(m.uses_input_gradient for m in chosen):
            inputs = inputs.detach().requires_grad_(True)  # the gradient to the inputs comes from this pass
        logits, activations, observed = _shared_forward(module, inputs, chosen, layer_names, speed)
        check_finite_outputs(logits.detach(), model)
        class_names = (list(loaded.class_names) if loaded else []) or [str(i) for i in range(logits.shape[1])]
        if len(class_names) != logits.shape[1]:
            raise XvizError(f"{len(class_names)} class names are given but the model scores {logits.shape[1]} "
                            "classes: give one name per output")
        targets = resolve_targets(logits.detach(), target, topk, class_names)
        layer_name = layer_names[0] if layer_names else None
        ctx = Context(module, inputs, logits, targets, layer_name, activations.get(layer_name), layers=activations)
        ctx.observed = observed
        try:
            raws = _raw_maps(chosen, ctx, activations, layer_names, tuple(inputs.shape[-2:]))
        finally:
            ctx.release()
    probs = torch.softmax(logits.detach().float(), dim=1)
    del logits, activations
    model_name = loaded.name if loaded else type(module).__name__
    return _explanations(module, raws, probs, targets, class_names, model_name, inputs_names,
                         tuple(inputs.shape[-2:]))


def _layers_to_capture(module: nn.Module, layer, inputs: torch.Tensor, model_name: str | None, pm) -> list[str]:
    """The layer names to capture: those requested (checked), else the default one (see :func:`resolve_layer`)."""
    requested = layer_list(layer)
    if len(requested) > 1:
        return [resolve_layer(module, name, inputs)[0] for name in requested]
    name, _ = resolve_layer(module, requested[0] if requested else None, inputs, model_name, pm, warn=True)
    return [name]


def _shared_forward(module: nn.Module, inputs: torch.Tensor, chosen: list[Method], layer_names: list[str],
                    speed: Speed = FP32):
    """The one forward pass all methods share: ``(logits, {layer: activation}, {method: observed})``.
    When the inputs require grad (a method uses the input gradient), the captured layers stay in the graph."""
    forward = compiled(module) if speed.compiled else module
    with contextlib.ExitStack() as stack:
        observed = {m.name: stack.enter_context(m.observe(module)) for m in chosen}  # see the shared forward
        layers = [find_layer(module, n) for n in layer_names]
        captured = stack.enter_context(capture_layers(layers, keep_graph=inputs.requires_grad or None)) \
            if layer_names else []
        with autocast(inputs.device, speed):
            logits = first_output(forward(inputs))
    if logits.dtype in (torch.bfloat16, torch.float16):  # autocast: scores and gradients in fp32
        logits = logits.float()
    activations = {name: c.activation for name, c in zip(layer_names, captured)}
    for name, act in activations.items():
        if act is None:
            raise XvizError(f"layer `{name}` did not run in the forward pass: choose another --layer")
    if logits.dim() != 2:
        raise XvizError(f"the model's output has shape {tuple(logits.shape)}; xviz explains (N, classes) scores")
    return logits, activations, observed


def _raw_maps(chosen: list[Method], ctx: Context, activations: dict, layer_names: list[str], size) -> list:
    """``[(method, layer name, raw maps)]``: each method's maps, per layer for methods that explain
    several, fused over ``layer_names`` when several were captured."""
    raws = []
    for m in chosen:
        for name, act in activations.items() if m.uses_layer else ():
            if act.dim() != 4 or act.shape[2] * act.shape[3] == 1:
                raise XvizError(f"layer `{name}` outputs shape {tuple(act.shape)}, not a spatial map "
                                f"(N, C, h, w): `{m.name}` needs a convolutional layer (see `xviz layers`)")
        if m.uses_layer and len(layer_names) > 1:
            results = [m.compute(ctx.at(name)) for name in layer_names]
            if any(isinstance(r, dict) for r in results):  # a method explaining layers of its own
                raws.extend((m, name, raw.detach()) for name, raw in results[0].items())
                continue
            raws.append((m, ",".join(layer_names), fuse_layer_maps([r.detach() for r in results], size, m.signed)))
            continue
        result = m.compute(ctx)
        per_layer = result.items() if isinstance(result, dict) else [(ctx.layer if m.uses_layer else None, result)]
        raws.extend((m, name, raw.detach()) for name, raw in per_layer)
    return raws


def _explanations(module: nn.Module, raws, probs: torch.Tensor, targets: torch.Tensor, class_names, model_name: str,
                  inputs_names, size) -> list[Explanation]:
    """One Explanation per raw map set: normalised maps (on the method's display range, if it has one),
    targets, scores and predictions."""
    top_p, top_i = probs.max(dim=1)
    t = targets.cpu().numpy()
    common = dict(
        model=model_name,
        targets=t,
        target_names=tuple(tuple(class_names[j] for j in row) for row in t),
        scores=probs.gather(1, targets).cpu().numpy(),
        predictions=top_i.cpu().numpy(),
        prediction_names=tuple(class_names[j] for j in top_i.tolist()),
        prediction_scores=top_p.cpu().numpy(),
        inputs=tuple(str(n) for n in inputs_names),
        versions=library_versions(),
    )
    out = []
    for m, name, raw in raws:
        if raw.dim() != 4 or raw.shape[:2] != targets.shape:
            raise RuntimeError(f"method `{m.name}` returned shape {tuple(raw.shape)}, expected (N, K, h, w) = "
                               f"{tuple(targets.shape)} + (h, w)")
        maps = normalize_maps(raw, size, m.signed, m.display_range(module, name))
        out.append(Explanation(
            method=m.name, layer=name, signed=m.signed,
            raw=raw.float().cpu().numpy(), maps=maps.cpu().numpy(), **common,
        ))
    return out


@dataclass(frozen=True)
class LayerChoice:
    """The layer the layer methods explain, and how it was chosen: ``"given"``, ``"plugin"`` (the
    model's default, from the ``xviz_default_target_layer`` hook) or ``"last spatial"``."""

    name: str
    how: str

    def describe(self) -> str:
        why = {"given": "as given", "plugin": "the model's default",
               "last spatial": "the last layer with a spatial output"}[self.how]
        return f"explaining layer `{self.name}` ({why}; choose another with --layer)"


@dataclass
class Batch:
    """One batch of explained images: their ``names``, ``views`` (each image as the model sees it:
    resized and cropped, a PIL image), one Explanation per method (per layer for methods that explain
    several), the inputs that could not be read (``skipped``: ``(name, why)``) and the ``layer`` choice
    (the same for every batch; ``None`` when no method uses a layer)."""

    names: list[str]
    views: list
    explanations: list[Explanation]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    layer: LayerChoice | None = None


def as_loaded(model, preprocess=None, class_names=None) -> LoadedModel:
    """``model`` as a :class:`LoadedModel`: a plain ``nn.Module`` gets ``preprocess`` (a
    :class:`xviz.images.Preprocessing`, a dict of its fields, or a torchvision weights' ``transforms()``;
    default ImageNet's, with a warning) and ``class_names`` (default ``"0"``, ``"1"``, ...)."""
    from xviz.images import Preprocessing
    from xviz.models import IMAGENET_PREPROCESSING

    if isinstance(model, LoadedModel):
        if preprocess is None and class_names is None:
            return model
        return replace(model, preprocessing=_preprocessing(preprocess) if preprocess is not None else model.preprocessing,
                       class_names=list(class_names) if class_names is not None else model.class_names)
    if not isinstance(model, nn.Module):
        raise XvizError(f"explain() takes a torch.nn.Module or xviz.load_model(...), not {type(model).__name__}")
    if preprocess is None:
        warnings.warn("no preprocess= given: using ImageNet preprocessing (resize 256, center crop 224, ImageNet mean "
                      "and std); pass preprocess=xviz.Preprocessing(...) if the model was trained otherwise",
                      stacklevel=4)
    pre = IMAGENET_PREPROCESSING if preprocess is None else _preprocessing(preprocess)
    assert isinstance(pre, Preprocessing)
    return LoadedModel(model, type(model).__name__, list(class_names or []), pre, "the module given")


def _preprocessing(preprocess):
    from xviz.images import Preprocessing

    if isinstance(preprocess, Preprocessing):
        return preprocess
    if isinstance(preprocess, dict):
        from xviz.models import IMAGENET_PREPROCESSING

        return Preprocessing.from_dict({**IMAGENET_PREPROCESSING.to_dict(), **preprocess})
    if hasattr(preprocess, "crop_size") and hasattr(preprocess, "mean"):
        return Preprocessing.from_transforms(preprocess)
    raise XvizError(f"preprocess= must be an xviz.Preprocessing, a dict of its fields (resize, crop, mean, std) or a "
                    f"torchvision weights' transforms(), not {type(preprocess).__name__}")


def explain_batches(model: LoadedModel | nn.Module, images: Sequence, methods: Sequence[str | Method] = ("gradcam",), *,
                    layer: str | Sequence[str] | None = None, target=None, topk: int = 1, batch_size: int = 16,
                    pm=None, skip_unreadable: bool = False, preprocess=None, class_names=None, fast: bool | str = False,
                    compile: bool = False, workers: int | None = None) -> Iterator[Batch]:
    """Explain images (paths, PIL images, (H, W, 3) arrays or (3, H, W) tensors of pixels) with the
    model's own preprocessing, ``batch_size`` at a time: one :class:`Batch` per batch, all methods sharing
    one pass (:func:`explain_tensors`). Image files are decoded by ``workers`` DataLoader processes while
    the model runs (default: up to 2 when there is more than one batch; see :mod:`xviz.inputs`). The
    layer is chosen once, on the first batch. ``skip_unreadable``: an image that cannot be read is
    reported in ``Batch.skipped`` instead of raising. A plain module takes ``preprocess``/``class_names``
    (see :func:`as_loaded`); ``fast``/``compile``: see :func:`explain_tensors`."""
    if isinstance(images, (str, Path, Image.Image, np.ndarray)) or (isinstance(images, torch.Tensor) and images.dim() == 3):
        images = [images]
    if isinstance(methods, (str, Method)):
        methods = [methods]
    model = as_loaded(model, preprocess, class_names)
    if images is None or len(images) == 0:
        raise XvizError("no images given to explain")
    if batch_size < 1:
        raise XvizError(f"batch_size {batch_size} must be at least 1")
    pm = pm or registry.default_plugin_manager()
    chosen = resolve_methods(methods, pm)
    device = next((p.device for p in model.module.parameters()), torch.device("cpu"))
    speed = choose_speed(device, fast, compile)
    choice = None
    loaded = load_batches(images, model.preprocessing, batch_size, skip_unreadable, workers,
                          pin_memory=device.type == "cuda")
    with channels_last_weights(model.module, speed.channels_last):  # once for the run, not per batch
        for part in loaded:
            if part.inputs is None:
                yield Batch(part.names, part.views, [], part.skipped, choice)
                continue
            if choice is None and any(m.uses_layer for m in chosen):
                choice = LayerChoice(",".join(layer_list(layer)), "given") if layer else \
                    LayerChoice(*resolve_layer(model.module, None, part.inputs, model.name, pm))
            explanations = explain_tensors(model, part.inputs, chosen, layer=choice.name if choice else layer,
                                           target=target, topk=topk, inputs_names=part.names, pm=pm, fast=speed)
            yield Batch(part.names, part.views, explanations, part.skipped, choice)


def explain(model: LoadedModel | nn.Module, images: Sequence, methods: Sequence[str | Method] = ("gradcam",), *,
            layer: str | Sequence[str] | None = None, target=None, topk: int = 1, batch_size: int = 16, pm=None,
            preprocess=None, class_names=None, fast: bool | str = False, compile: bool = False) -> list[Explanation]:
    """Explain images (paths, PIL images, arrays or tensors of pixels) with a loaded model or any
    ``nn.Module`` (``preprocess=``, ``class_names=``: see :func:`as_loaded`); one Explanation per method
    covering all images (the batches of :func:`explain_batches`, joined), holding the images as the
    model saw them for :meth:`Explanation.plot` and :meth:`Explanation.save`. ``fast=True``: the fast
    path (:mod:`xviz.fast`: channels_last; ``"bf16"``/``"fp16"``: also autocast), CAM maps within 1e-2 of
    fp32; ``compile=True``: the forward pass through ``torch.compile``."""
    parts: list[list[Explanation]] = []
    views: list = []
    for batch in explain_batches(model, images, methods, layer=layer, target=target, topk=topk,
                                 batch_size=batch_size, pm=pm, preprocess=preprocess, class_names=class_names,
                                 fast=fast, compile=compile):
        if not parts and batch.layer is not None and batch.layer.how == "last spatial":
            warnings.warn(f"explaining layer `{batch.layer.name}`, the last with a spatial output; pass layer= "
                          "to choose another", stacklevel=2)
        parts.append(batch.explanations)
        views.extend(batch.views)
    return [replace(concat(list(group)), images=tuple(views)) for group in zip(*parts)]


def concat(explanations: list[Explanation]) -> Explanation:
    """Join explanations of consecutive batches by one method into one."""
    if len(explanations) == 1:
        return explanations[0]
    first = explanations[0]
    cat = lambda attr: np.concatenate([getattr(e, attr) for e in explanations])  # noqa: E731
    join = lambda attr: tuple(x for e in explanations for x in getattr(e, attr))  # noqa: E731
    return replace(first, raw=cat("raw"), maps=cat("maps"), targets=cat("targets"), scores=cat("scores"),
                   predictions=cat("predictions"), prediction_scores=cat("prediction_scores"),
                   target_names=join("target_names"), prediction_names=join("prediction_names"),
                   inputs=join("inputs"))
