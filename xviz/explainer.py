"""Resolve model, layer, targets and methods, run one shared pass per batch, return Explanations.

    >>> import xviz
    >>> model = xviz.load_model("xviz-demo")
    >>> gradcam, gradcampp = xviz.explain(model, ["a.png", "b.png"], methods=["gradcam", "gradcampp"])
    >>> gradcampp.maps.shape      # (images, targets, H, W), values in [0, 1]
"""

from __future__ import annotations

import contextlib
import difflib
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from xviz import registry
from xviz.errors import XvizError
from xviz.explanation import Explanation, library_versions
from xviz.hooks import capture_layers, find_layer, first_output, preserved_state, spatial_layers
from xviz.images import read_image
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
        close = difflib.get_close_matches(target, names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(f'`{c}`' for c in close)}? " if close else ""
        raise XvizError(f"unknown class `{target}`: {hint}give a class index 0-{num_classes - 1} or a name "
                        "from `xviz models --classes NAME`")
    index = int(target)
    if not 0 <= index < num_classes:
        raise XvizError(f"class index `{index}` is out of range: the model has classes 0-{num_classes - 1}")
    return index


def normalize_maps(raw: torch.Tensor, size: tuple[int, int], signed: bool = False) -> torch.Tensor:
    """(N, K, h, w) -> (N, K, H, W): bilinear upsampling (``align_corners=False``) to ``size``, then per map
    ``(x - min) / (max - min)``, or ``x / max|x|`` when ``signed``. A map constant at its own resolution
    (spread <= 1e-6 of its magnitude, e.g. all zero after the ReLU) becomes 0, not an upsampling artefact."""
    maps = raw.detach().float()
    n, k, h, w = maps.shape
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
                    pm=None) -> list[Explanation]:
    """Explain a batch of preprocessed images with each method; one Explanation per method (per layer
    for a method that returns maps of several layers, such as ``attention``).

    All methods share one forward pass and (gradient methods) one ``autograd.grad`` call. The
    model is left exactly as found: modes, ``requires_grad``, no hooks, no graph kept alive.

    ``layer`` may name several layers (``["a", "b"]`` or ``"a,b"``): all are captured in the same
    forward, gradients to all come from the same call, each layer-method computes a map per layer and
    the maps are fused by :func:`fuse_layer_maps` into one Explanation whose ``layer`` is ``"a,b"`` and
    whose ``raw`` is the fused map at input size.
    """
    loaded = model if isinstance(model, LoadedModel) else None
    module = loaded.module if loaded else model
    model_name = loaded.name if loaded else type(module).__name__
    class_names = list(loaded.class_names) if loaded else []
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
    needs_layer = any(m.uses_layer for m in chosen)
    layer_name, layer_names = None, []
    if needs_layer:
        requested = layer_list(layer)
        if len(requested) > 1:
            layer_names = [resolve_layer(module, name, inputs)[0] for name in requested]
        else:
            layer_name, _ = resolve_layer(module, requested[0] if requested else None, inputs,
                                          loaded.name if loaded else None, pm, warn=True)
            layer_names = [layer_name]
        layer_name = layer_names[0]

    for m in chosen:
        m.check(module, pm)
    with torch.inference_mode(False), torch.enable_grad(), preserved_state(module):
        if inputs.is_inference():
            inputs = inputs.clone()
        with contextlib.ExitStack() as stack:
            observed = {m.name: stack.enter_context(m.observe(module)) for m in chosen}  # see the shared forward
            if needs_layer:
                captured = stack.enter_context(capture_layers([find_layer(module, n) for n in layer_names]))
            logits = first_output(module(inputs))
        activations = {name: c.activation for name, c in zip(layer_names, captured)} if needs_layer else {}
        for name, act in activations.items():
            if act is None:
                raise XvizError(f"layer `{name}` did not run in the forward pass: choose another --layer")
        activation = activations.get(layer_name)
        if logits.dim() != 2:
            raise XvizError(f"the model's output has shape {tuple(logits.shape)}; xviz explains (N, classes) scores")
        check_finite_outputs(logits.detach(), model)
        if not class_names:
            class_names = [str(i) for i in range(logits.shape[1])]
        targets = resolve_targets(logits.detach(), target, topk, class_names)
        ctx = Context(module, inputs, logits, targets, layer_name, activation, layers=activations)
        ctx.observed = observed
        size = tuple(inputs.shape[-2:])
        try:
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
                    fused = fuse_layer_maps([r.detach() for r in results], size, m.signed)
                    raws.append((m, ",".join(layer_names), fused))
                    continue
                result = m.compute(ctx)
                per_layer = result.items() if isinstance(result, dict) else [(layer_name if m.uses_layer else None, result)]
                raws.extend((m, name, raw.detach()) for name, raw in per_layer)
        finally:
            ctx.release()

    probs = torch.softmax(logits.detach().float(), dim=1)
    del logits, activation, activations
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
        out.append(Explanation(
            method=m.name, layer=name, signed=m.signed,
            raw=raw.float().cpu().numpy(), maps=normalize_maps(raw, size, m.signed).cpu().numpy(), **common,
        ))
    return out


def explain(model: LoadedModel, images: Sequence, methods: Sequence[str | Method] = ("gradcam",), *,
            layer: str | Sequence[str] | None = None, target=None, topk: int = 1, batch_size: int = 16, pm=None) -> list[Explanation]:
    """Explain image files (or PIL images) with the model's own preprocessing; one Explanation per
    method covering all images."""
    if isinstance(images, (str, Path, Image.Image)):
        images = [images]
    if isinstance(methods, (str, Method)):
        methods = [methods]
    if not isinstance(model, LoadedModel):
        raise XvizError("explain() needs a LoadedModel (xviz.load_model(...)) to know the preprocessing; "
                        "for a bare nn.Module and a preprocessed batch use xviz.explainer.explain_tensors")
    if not images:
        raise XvizError("no images given to explain")
    if batch_size < 1:
        raise XvizError(f"batch_size {batch_size} must be at least 1")
    pm = pm or registry.default_plugin_manager()
    names = [getattr(im, "filename", "") or "" if isinstance(im, Image.Image) else str(im) for im in images]
    parts: list[list[Explanation]] = []
    for start in range(0, len(images), batch_size):
        chunk = [im if isinstance(im, Image.Image) else read_image(im) for im in images[start:start + batch_size]]
        batch = torch.stack([model.preprocessing.tensor(im) for im in chunk])
        if layer is None and any(m.uses_layer for m in resolve_methods(methods, pm)):
            layer, _ = resolve_layer(model.module, None, batch, model.name, pm, warn=True)  # once, not per batch
        parts.append(explain_tensors(model, batch, methods, layer=layer, target=target, topk=topk,
                                     inputs_names=names[start:start + batch_size], pm=pm))
    return [concat(list(group)) for group in zip(*parts)]


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
