"""The evaluation driver: pick the images and methods, explain each batch once for all methods, score
every map with the metrics (:mod:`xviz.evaluation.metrics`), average and rank them
(:class:`xviz.evaluation.results.Results`)."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from xviz import registry, sharding
from xviz.capture import preserved_state
from xviz.errors import XvizError
from xviz.evaluation.metrics import (ROAD_NOISE, ROAD_PERCENTILES, auc, average_drop_increase, class_probability,
                                     energy_pointing, image_seed, infidelity_scores, make_baseline, mask_by_map,
                                     perturbation_curves, pixel_ranks, pointing_game, pointing_tolerance,
                                     randomized_copy, road_probabilities, scoring_model, sensitivity_scores,
                                     spearman, ssim)
from xviz.evaluation.names import BASELINES, COLUMNS, DEFAULT_METRICS, METRICS, RANDOM, check_metric_names
from xviz.evaluation.results import MethodScores, Results
from xviz.evaluation.tally import Tally, merged
from xviz.explainer import explain_tensors, resolve_layer, resolve_methods
from xviz.methods import Context, Method
from xviz.models import LoadedModel


class RandomMap(Method):
    """Uniform noise, a function of the image alone: the chance level of every metric."""

    name = RANDOM
    summary = "uniform random map (reference)"
    uses_layer = False

    def compute(self, ctx: Context) -> torch.Tensor:
        x = ctx.inputs.detach().double().cpu()
        out = []
        for img in x:  # the same image gets the same map, whichever model explains it
            seed = int(img.abs().sum() * 1000 + img.flatten()[:: max(1, img.numel() // 97)].sum() * 7) % (2 ** 31)
            out.append(torch.rand(ctx.targets.shape[1], *img.shape[-2:], generator=torch.Generator().manual_seed(seed)))
        return torch.stack(out).to(ctx.inputs.device)


# --- datasets -----------------------------------------------------------------------------------

class ImageFolder:
    """Images of a folder, preprocessed for the model; no labels, no regions."""

    def __init__(self, folder, preprocessing):
        from xviz.images import list_images

        self.paths = list_images([folder])
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from xviz.images import read_image

        return self.preprocessing.tensor(read_image(self.paths[index])), -1


def region_kinds(dataset) -> tuple[str, ...]:
    """The regions a dataset annotates: ``object`` and ``part`` masks, or a ``box``."""
    if hasattr(dataset, "masks"):
        return ("object", "part")
    if hasattr(dataset, "box"):
        return ("box",)
    return ()


def _geometry(mask: np.ndarray, preprocessing, size: tuple[int, int]) -> np.ndarray:
    """A boolean mask of the original image, resized and cropped as the image was."""
    from PIL import Image

    img = Image.fromarray(mask.astype(np.uint8) * 255)
    if preprocessing is not None:
        img = preprocessing.view(img.convert("RGB")).convert("L")
    if img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(img) >= 128


def regions_of(dataset, index: int, preprocessing, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """``{region: (H, W) bool}`` for item ``index``, in the model input's geometry."""
    kinds = region_kinds(dataset)
    if "box" in kinds:
        w, h = dataset.image(index).size
        bx, by, bw, bh = dataset.box(index)
        mask = np.zeros((h, w), bool)
        mask[max(0, int(round(by))):int(round(by + bh)), max(0, int(round(bx))):int(round(bx + bw))] = True
        return {"box": _geometry(mask, preprocessing, size)}
    if kinds:
        masks = dataset.masks(index)
        return {k: _geometry(np.asarray(masks[k]), preprocessing, size) for k in kinds if k in masks}
    return {}


# --- what applies -------------------------------------------------------------------------------

def applicable_methods(model: LoadedModel | nn.Module, example: torch.Tensor, names: Sequence[str] | None = None,
                       layer: str | None = None, pm=None) -> tuple[list[Method], dict[str, str]]:
    """The methods (``names``, default: all registered) that apply to the model, and for the others
    why not: ``(applicable, {name: reason})``."""
    pm = pm or registry.default_plugin_manager()
    module = model.module if isinstance(model, LoadedModel) else model
    model_name = model.name if isinstance(model, LoadedModel) else None
    everything = {} if names else registry.methods(pm)
    candidates = resolve_methods(names, pm) if names else list(everything.values())
    layer_problem = None
    if any(m.uses_layer for m in candidates):
        try:
            resolve_layer(module, layer, example, model_name, pm)
        except XvizError as exc:
            layer_problem = str(exc)
    ok, why = [], {name: everything.clash_message(name) for name in getattr(everything, "clashes", {})}
    for m in candidates:
        try:
            if m.uses_layer and layer_problem:
                raise XvizError(layer_problem)
            m.check(module, pm)
        except XvizError as exc:
            why[m.name] = str(exc)
            continue
        ok.append(m)
    return ok, why


# --- the evaluation -----------------------------------------------------------------------------

def check_metrics(metrics: Sequence[str] | None, dataset, dataset_name: str = "the dataset") -> list[str]:
    """The metrics to compute (default: all that apply), or an error naming those that apply."""
    has_regions = bool(region_kinds(dataset))
    applicable = [m for m in METRICS if m != "pointing" or has_regions]
    if not metrics:
        return [m for m in applicable if m in DEFAULT_METRICS]
    check_metric_names(metrics)
    for m in metrics:
        if m not in applicable:
            raise XvizError(f"metric `{m}` needs object masks or boxes, which {dataset_name} does not have; "
                            f"metrics that apply: {', '.join(applicable)}")
    return list(dict.fromkeys(metrics))


def evaluate(model: LoadedModel | nn.Module, methods: Sequence[str | Method] | None, dataset, *,
             metrics: Sequence[str] | None = None, limit: int | None = None, batch_size: int = 32,
             steps: int = 20, baseline: str = "blur", blur_sigma: float | None = None, randomize: int = 3,
             flag_above: float = 0.5, layer: str | None = None, rank_by: str | None = None,
             reference: bool = True, chunk: int = 256, seed: int = 0, mean=None, std=None, pm=None,
             progress: bool = True, dataset_name: str = "the dataset", show_examples: int = 4,
             tolerance: float | None = None, road_percentiles: Sequence[float] = ROAD_PERCENTILES,
             infidelity_samples: int = 10, sensitivity_samples: int = 5, world=None) -> Results:
    """Measure each method's faithfulness on ``dataset`` (items ``(normalised image, label)``;
    ``masks(i)`` or ``box(i)`` enable the pointing games). See :mod:`xviz.evaluation` for the metrics.

    ``methods``: names or Method objects (``None``: every registered method that applies);
    ``limit``: that many images, evenly spaced over the dataset; ``steps``: points of the
    deletion/insertion curves; ``baseline``: what removed pixels become (``blur``, ``mean``,
    ``black``, ``zero``); ``randomize``: how many top weight layers the sanity check re-initialises;
    ``reference``: add the ``random`` map row; ``show_examples``: images kept for
    :meth:`Results.sanity_figure`; ``rank_by``: a column of :data:`COLUMNS` (default
    ``ins_minus_del``, insertion minus deletion AUC). ``mean``/``std``: the normalisation of a bare
    module's inputs (a LoadedModel brings its own), used for black pixels. ``tolerance``: of the
    pointing game, in pixels of the model input (default :func:`pointing_tolerance`, 15 px at 224 px);
    ``road_percentiles``: ROAD's removal thresholds; ``infidelity_samples``/``sensitivity_samples``:
    perturbations per image of captum's metrics.

    Every random draw of an image (tie order, ROAD noise, captum's perturbations) comes from its own
    seed, :func:`image_seed` of ``seed`` and its identity (dataset index, or file name for a folder),
    so the numbers do not depend on ``batch_size`` or on which other images are evaluated with it.

    ``world``: the processes to share the work with (``xviz.sharding.current()`` in every process of a
    ``torchrun`` group, as ``xviz evaluate`` passes; default: this process alone): each rank scores a
    contiguous block of the batches and the ranks' sums and counts are added
    (:mod:`xviz.evaluation.tally`), so every rank returns the Results one process would have.
    """
    from tqdm import tqdm

    pm = pm or registry.default_plugin_manager()
    run = _Run(model, dataset, check_metrics(metrics, dataset, dataset_name), steps, baseline, blur_sigma, chunk,
               seed, mean, std, pm)
    _check_settings(steps, batch_size, baseline)
    indices = _image_indices(len(dataset), limit, dataset_name)
    example = dataset[int(indices[0])][0][None].to(run.device)
    use, skipped = _methods_to_use(model, methods, example, layer, pm)
    if reference and RANDOM not in {m.name for m in use}:
        use = [*use, RandomMap()]
    run.methods, run.size = use, tuple(example.shape[-2:])
    run.tolerance = pointing_tolerance(run.size) if tolerance is None else float(tolerance)
    run.road_percentiles, run.infidelity_samples, run.sensitivity_samples = \
        tuple(road_percentiles), infidelity_samples, sensitivity_samples
    if any(m.uses_layer for m in use):
        run.layer, _ = resolve_layer(run.module, layer, example, run.loaded.name if run.loaded else None, pm)
    randomized_layers = []
    if "sanity" in run.metrics:
        run.randomized, randomized_layers = randomized_copy(run.module, randomize, seed)

    tally, world = Tally(show_examples), world or sharding.World()
    mine = sharding.block(len(indices), world, batch_size)  # whole batches: each as one process makes it
    started = time.perf_counter()
    bar = tqdm(total=len(mine), unit="img", desc="evaluating", disable=not progress, file=sys.stderr)
    with preserved_state(run.module):
        run.scorer = scoring_model(run.module) if {"deletion", "insertion", "drop", "road", "infidelity"} \
            & set(run.metrics) else run.module
        for start in range(mine.start, mine.stop, batch_size):
            run.score_batch([int(i) for i in indices[start:min(start + batch_size, mine.stop)]], tally)
            bar.update(min(batch_size, mine.stop - start))
    bar.close()
    tally = merged(world, tally)
    rows, criterion = _ranked(tally, flag_above, rank_by)
    settings = run.settings(dataset_name, len(indices), randomized_layers, flag_above,
                            skipped if methods is None else {}, time.perf_counter() - started)
    settings.update(processes=world.size, batch_size=batch_size, chunk=chunk, limit=limit, randomize=randomize, reference=reference,
                    methods=[m.name for m in use], image_indices=[int(i) for i in indices])
    return Results(rows, criterion, settings, tally.examples)


def _check_settings(steps: int, batch_size: int, baseline: str) -> None:
    if steps < 2:
        raise XvizError(f"`--steps {steps}` must be at least 2")
    if batch_size < 1:
        raise XvizError(f"`--batch-size {batch_size}` must be at least 1")
    if baseline not in BASELINES:
        raise XvizError(f"unknown baseline `{baseline}`: use {', '.join(BASELINES)}")


def _image_indices(n_total: int, limit: int | None, dataset_name: str) -> np.ndarray:
    """``limit`` indices evenly spaced over the dataset (all of them without a limit)."""
    if n_total == 0:
        raise XvizError(f"{dataset_name} holds no images")
    n = n_total if limit is None else min(int(limit), n_total)
    if n < 1:
        raise XvizError(f"`--limit {limit}` must be at least 1")
    return np.unique(np.round(np.linspace(0, n_total - 1, n)).astype(int)) if n < n_total else np.arange(n_total)


def _methods_to_use(model, methods, example, layer, pm) -> tuple[list[Method], dict[str, str]]:
    """The methods to score and, when none were named, those skipped and why; a named method that
    does not apply is an error listing those that do."""
    if methods is None:
        use, skipped = applicable_methods(model, example, None, layer, pm)
    else:
        use, skipped = applicable_methods(model, example, list(methods), layer, pm)
        if skipped:
            every, _ = applicable_methods(model, example, None, layer, pm)
            bad = next(iter(skipped))
            raise XvizError(f"method `{bad}` does not apply to this model ({skipped[bad].rstrip('.')}); methods that "
                            f"apply: {', '.join(m.name for m in every) or 'none'}")
    if not use:
        raise XvizError("no registered method applies to this model (`xviz methods` lists them)")
    return use, skipped


class _Run:
    """One evaluation's fixed settings, and the scoring of one batch of images with every method."""

    def __init__(self, model, dataset, metrics, steps, baseline, blur_sigma, chunk, seed, mean, std, pm):
        self.loaded = model if isinstance(model, LoadedModel) else None
        self.model, self.module = model, self.loaded.module if self.loaded else model
        self.dataset, self.metrics, self.steps, self.chunk, self.seed, self.pm = dataset, metrics, steps, chunk, seed, pm
        self.baseline, self.blur_sigma = baseline, blur_sigma
        self.pre = self.loaded.preprocessing if self.loaded else None
        self.mean = torch.tensor(mean if mean is not None else (self.pre.mean if self.pre else (0.0, 0.0, 0.0)),
                                 dtype=torch.float32)
        self.std = torch.tensor(std if std is not None else (self.pre.std if self.pre else (1.0, 1.0, 1.0)),
                                dtype=torch.float32)
        self.black = -self.mean / self.std
        self.device = next((p.device for p in self.module.parameters()), torch.device("cpu"))
        self.methods, self.size, self.layer, self.randomized, self.scorer = [], None, None, None, None
        self.tolerance, self.road_percentiles, self.infidelity_samples, self.sensitivity_samples = 0.0, (), 0, 0

    def identity(self, index: int):
        """What names an image for its seed: its file name in a folder of images, else its dataset index."""
        paths = getattr(self.dataset, "paths", None)
        return Path(paths[index]).name if paths is not None else int(index)

    def score_batch(self, idx: list[int], tally: Tally) -> None:
        x = torch.stack([self.dataset[i][0] for i in idx]).to(self.device)
        exps = explain_tensors(self.model, x, self.methods, layer=self.layer, pm=self.pm)
        targets = torch.as_tensor(exps[0].targets[:, 0], device=self.device)
        full = class_probability(self.scorer, x, targets, self.chunk)
        base = make_baseline(x, self.baseline, self.black, self.blur_sigma)
        empty = class_probability(self.scorer, base, targets, self.chunk)
        regions = self._regions(idx) if "pointing" in self.metrics else {}
        rand_maps = _randomized_maps(self.randomized, x, targets, self.methods, self.layer, self.pm) \
            if self.randomized is not None else {}
        show = self._keep_examples(x, targets, tally) if rand_maps else []
        seeds = [image_seed(self.seed, self.identity(i)) for i in idx]
        for exp in exps:
            key = exp.method if exp.layer is None or sum(e.method == exp.method for e in exps) == 1 \
                else f"{exp.method}:{exp.layer}"
            maps = torch.from_numpy(exp.maps[:, 0])
            if "deletion" in self.metrics or "insertion" in self.metrics:
                curves = perturbation_curves(self.scorer, x, base, maps.to(self.device), targets, self.steps,
                                             self.chunk, seeds, full, empty)
                for kind in ("deletion", "insertion"):
                    if kind in self.metrics:
                        tally.add(key, kind, auc(curves[kind]).sum())
                        tally.add_curve(key, kind, curves[kind])
            if "drop" in self.metrics:
                masked = class_probability(self.scorer, mask_by_map(x, maps.to(self.device), self.black), targets,
                                           self.chunk)
                drop, increase = average_drop_increase(full.cpu(), masked.cpu())
                tally.add(key, "average_drop", drop * len(idx))
                tally.add(key, "increase", increase * len(idx))
            for kind, region in regions.items():
                tally.add(key, f"pointing_{kind}", pointing_game(maps, region, self.tolerance).double().sum())
                tally.add(key, f"energy_{kind}", energy_pointing(maps, region).sum())
            if "road" in self.metrics:
                road = road_probabilities(self.scorer, x, pixel_ranks(maps, seeds), targets, seeds,
                                          self.road_percentiles, ROAD_NOISE, self.chunk)
                morf, lerf = road["morf"].double().mean(1), road["lerf"].double().mean(1)
                tally.add(key, "road_morf", morf.sum())
                tally.add(key, "road_lerf", lerf.sum())
                tally.add(key, "road", ((lerf - morf) / 2).sum())
            if "infidelity" in self.metrics:
                tally.add(key, "infidelity", infidelity_scores(self.scorer, x, maps.clamp_min(0), targets, seeds,
                                                               self.infidelity_samples).sum())
            if "sensitivity" in self.metrics:
                tally.add(key, "sensitivity", sensitivity_scores(self._explainer(exp), x, targets, seeds,
                                                                 self.sensitivity_samples).sum())
            if rand_maps:
                self._sanity(exp, key, rand_maps[(exp.method, exp.layer)], show, tally)
            tally.counts[key] = tally.counts.get(key, 0) + len(idx)

    def _explainer(self, exp):
        """``(inputs, target) -> (n, H, W)`` maps of the method (and layer) that made ``exp``."""
        method = next(m for m in self.methods if m.name == exp.method)

        def explain(inputs: torch.Tensor, target: int) -> torch.Tensor:
            again = explain_tensors(self.model, inputs, [method], layer=self.layer, target=target, pm=self.pm)
            same = next(e for e in again if e.layer == exp.layer)
            return torch.from_numpy(same.maps[:, 0]).to(inputs)
        return explain

    def _regions(self, idx: list[int]) -> dict[str, torch.Tensor]:
        per_image = [regions_of(self.dataset, i, self.pre, self.size) for i in idx]
        return {k: torch.from_numpy(np.stack([r[k] for r in per_image])) for k in per_image[0]}

    def _keep_examples(self, x, targets, tally: Tally) -> list[int]:
        """Positions of this batch kept for the sanity figure (their images and labels are stored)."""
        examples = tally.examples
        show = _pick_examples(targets.tolist(), tally.show_examples - len(examples["images"]))
        if show:
            pixels = (x[show].float().cpu() * self.std[:, None, None] + self.mean[:, None, None]).clamp(0, 1)
            examples["images"] += list((pixels.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8))
            names = self.loaded.class_names if self.loaded else []
            examples["labels"] += [f"explaining {names[t] if t < len(names) else t}" for t in targets[show].tolist()]
        return show

    def _sanity(self, exp, key: str, other: np.ndarray, show: list[int], tally: Tally) -> None:
        a, b = exp.maps[:, 0], other
        if exp.signed:
            a, b = np.abs(a), np.abs(b)
        tally.add(key, "sanity_spearman", spearman(a, b).sum())
        tally.add(key, "sanity_ssim", ssim(a, b, 1.0).sum())
        if show:
            kept = tally.examples["maps"].setdefault(key, ([], []))
            kept[0].extend(exp.maps[show, 0])
            kept[1].extend(other[show])
            tally.examples["signed"][key] = exp.signed

    def settings(self, dataset_name, images, randomized_layers, flag_above, skipped, seconds) -> dict:
        """What was measured and how, for evaluate_settings.json."""
        from xviz.explanation import library_versions

        return {
            "model": self.loaded.name if self.loaded else type(self.module).__name__,
            "model_source": _relative(self.loaded.source) if self.loaded else "",
            "dataset": dataset_name,
            "images": int(images),
            "explained": "the predicted class of each image",
            "layer": self.layer,
            "metrics": self.metrics,
            "steps": self.steps,
            "baseline": self.baseline,
            "blur_sigma": (self.blur_sigma or max(self.size) / 16) if self.baseline == "blur" else None,
            "randomized_layers": randomized_layers,
            "flag_above": flag_above,
            "seed": self.seed,
            "tie_breaking": "per image: seed = sha256(f'{seed}:{identity}'), identity = dataset index or file name",
            "pointing_tolerance": self.tolerance,
            "pointing_ties": "a hit when any tied maximum of the positive map lies within the tolerance",
            "road_percentiles": list(self.road_percentiles) if "road" in self.metrics else None,
            "road_noise": ROAD_NOISE if "road" in self.metrics else None,
            "infidelity_samples": self.infidelity_samples if "infidelity" in self.metrics else None,
            "sensitivity_samples": self.sensitivity_samples if "sensitivity" in self.metrics else None,
            "skipped_methods": skipped,
            "seconds": round(seconds, 1),
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "versions": {**library_versions(), **metric_library_versions()},
        }


def metric_library_versions() -> dict[str, str]:
    """Versions of the libraries whose numerics the metrics use (captum's metrics, scipy's sparse solver and
    ranks, skimage's SSIM, numpy's percentiles)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("captum", "scipy", "scikit-image", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _ranked(tally: Tally, flag_above: float, rank_by: str | None) -> tuple[list[MethodScores], str]:
    """One row of mean values per method, sorted by ``rank_by`` (default: the first column all rows have)."""
    rows = []
    for key, acc in tally.sums.items():
        k = tally.counts[key]
        values = {name: v / k for name, v in acc.items()}
        if "deletion" in values and "insertion" in values:
            values["ins_minus_del"] = values["insertion"] - values["deletion"]
        flagged = bool(values["sanity_spearman"] >= flag_above) if "sanity_spearman" in values else None
        rows.append(MethodScores(key, values, {c: (v / k).numpy() for c, v in tally.curves.get(key, {}).items()},
                                 flagged, k))
    criterion = rank_by or next((c for c in ("ins_minus_del", "deletion", "insertion", "road", "average_drop",
                                             "energy_object", "energy_box", "sanity_spearman")
                                 if all(c in r.values for r in rows)), None)
    if criterion not in COLUMNS or not all(criterion in r.values for r in rows):
        raise XvizError(f"cannot rank by `{criterion}`: choose one of "
                        f"{', '.join(c for c in COLUMNS if all(c in r.values for r in rows))}")
    higher = COLUMNS[criterion][1]
    rows.sort(key=lambda r: -r.values[criterion] if higher else r.values[criterion])
    return rows, criterion


def _pick_examples(targets: list[int], count: int) -> list[int]:
    """Up to ``count`` positions, one per explained class first, then the rest in order."""
    if count <= 0:
        return []
    first = list({t: i for i, t in reversed(list(enumerate(targets)))}.values())[::-1]
    order = sorted(first) + [i for i in range(len(targets)) if i not in first]
    return order[:count]


def _relative(source: str) -> str:
    """A path under the current folder as a relative one (settings files travel between machines)."""
    try:
        return str(Path(source).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return source


def _randomized_maps(randomized: nn.Module, x: torch.Tensor, targets: torch.Tensor, methods, layer, pm) -> dict:
    """Maps of the randomised model for the same images and classes: ``{(method, layer): (N, H, W)}``
    (one explain pass per distinct class in the batch, all methods together)."""
    out: dict = {}
    for c in torch.unique(targets).tolist():
        where = (targets == c).nonzero()[:, 0]
        for exp in explain_tensors(randomized, x[where], methods, layer=layer, target=int(c), pm=pm):
            key = (exp.method, exp.layer)
            if key not in out:
                out[key] = np.zeros((x.shape[0], *exp.maps.shape[-2:]), np.float32)
            out[key][where.cpu().numpy()] = exp.maps[:, 0]
    return out


def load_data(name: str, model: LoadedModel, split: str = "test", root=None, pm=None):
    """``(dataset, description)`` for a registered dataset name or a folder of images, preprocessed
    as the model expects."""
    specs = registry.datasets(pm or registry.default_plugin_manager())
    if name in specs:
        return specs[name].build(split, root=root, transform=model.preprocessing.tensor), f"`{name}` ({split})"
    if Path(name).is_dir():
        return ImageFolder(name, model.preprocessing), f"folder `{name}`"
    try:
        registry.lookup(specs, name, "dataset", "xviz datasets")
    except XvizError as exc:
        raise XvizError(f"{exc}; --data also takes a folder of images") from None
