"""The training loop: data, model (with transfer), freeze schedule, optimiser, LR schedule, mixed
precision, checkpoints with exact resume, history; one tqdm bar per epoch and a summary line.

    from xviz.train import TrainConfig, train
    result = train(TrainConfig(model="xviz-demo", dataset="synthetic", epochs=3, out="runs/try"))
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from xviz import registry
from xviz.checkpoint import read_checkpoint
from xviz.errors import XvizError
from xviz.models import is_weights_file, pretrained, resolve_spec, torch_device, transfer_state
from xviz.train import distributed
from xviz.train.augment import resized, train_transform
from xviz.train.run_folder import (SKIPPED_FILE, SPLIT_FILE, RunFolder, read_split_record, rng_state, set_rng_state,
                                   unlocks_run_folders)
from xviz.train.config import TrainConfig
from xviz.train.schedules import FreezeSchedule, head_name, make_optimizer, make_scheduler


@torch.no_grad()
def run_test_epoch(model: nn.Module, loader: DataLoader, device, autocast=contextlib.nullcontext,
                   channels_last: bool = False, world: distributed.World = distributed.World()) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (fraction) of ``model`` over ``loader``; with several processes
    each passes its shard and the sums and counts are added over all of them (the whole test set's)."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for x, y in loader:
        if y.numel() == 0:  # every image of the batch failed to decode
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = model(x)
        total_loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        count += y.numel()
    total_loss, correct, count = distributed.all_sum(world, [total_loss, correct, count], device)
    return total_loss / max(count, 1), correct / max(count, 1)


@dataclass
class TrainResult:
    run: Path
    history: list[dict]
    best_acc: float
    finished_before: bool = False
    main: bool = True  # the process that reports (rank 0 of several; the only one otherwise)


def model_preprocessing(cfg: TrainConfig, pm):
    """The preprocessing ``cfg.model``'s weights expect (ImageNet statistics for torchvision and timm)."""
    return resolve_spec(cfg.model, registry.models(pm), pm).preprocessing


def build_data(cfg: TrainConfig, pm, run_root: Path | None = None):
    """Train and test datasets with their transforms; returns (train, test, class names, preprocessing).

    A dataset without preprocessing of its own (``imagefolder``) is preprocessed as the model expects. A
    split the run folder ``run_root`` recorded (``split.json``) goes back to the dataset as its
    ``split_record`` option, so a resumed run and ``xviz evaluate`` see the same test images."""
    specs = registry.datasets(pm)
    spec = registry.lookup(specs, cfg.dataset, "dataset", "xviz datasets")
    pre = resized(spec.preprocessing or model_preprocessing(cfg, pm), cfg.image_size)
    augment = spec.augment if cfg.augment is None else cfg.augment
    train_tf = train_transform(augment, pre, cfg)
    options = dict(cfg.dataset_options)
    record = read_split_record(run_root)
    if record is not None:
        options["split_record"] = record
    try:
        train_set = spec.build("train", root=cfg.data, transform=train_tf, **options)
        test_set = spec.build("test", root=cfg.data, transform=pre.tensor, **options)
    except (TypeError, ValueError) as exc:
        raise XvizError(f"dataset `{cfg.dataset}` does not accept the options {cfg.dataset_options}: {exc}") from None
    for split, data in (("train", train_set), ("test", test_set)):
        if len(data) == 0:
            where = f" in `{cfg.data}`" if cfg.data else ""
            raise XvizError(f"the {split} split of dataset `{cfg.dataset}`{where} holds no images: "
                            "check --data and --dataset-options")
    classes = list(getattr(train_set, "classes", None) or spec.class_names)
    return train_set, test_set, classes, pre


def record_data(run_root: Path, train_set, test_set, log=print) -> None:
    """Describe the datasets (classes, counts, imbalance), keep the split in ``split.json`` and list the
    images left out in ``skipped_images.txt`` (with one summary line); images that fail to decode later
    are appended to that list by the dataset."""
    import json

    from xviz.render import atomic_write

    for data in (train_set, test_set):
        if hasattr(data, "describe"):
            log(data.describe())
    record = getattr(train_set, "split_record", None)
    if record is not None and not (run_root / SPLIT_FILE).exists():
        text = json.dumps(record, indent=1)
        atomic_write(run_root / SPLIT_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    if not hasattr(train_set, "skipped"):
        return
    skipped = [*train_set.skipped, *getattr(test_set, "skipped", [])]
    listing = "".join(f"{path}\t{why}\n" for path, why in skipped)
    atomic_write(run_root / SKIPPED_FILE, lambda tmp: Path(tmp).write_text(listing, encoding="utf-8"))
    if skipped:
        total = len(train_set) + len(test_set) + len(skipped)
        log(f"skipped {len(skipped)} of {total} image files that cannot be read (damaged or not images; listed in "
            f"{run_root / SKIPPED_FILE})")
    for data in (train_set, test_set):
        data.skip_log = str(run_root / SKIPPED_FILE)


def _lines(path: str | None) -> int:
    try:
        with open(path, encoding="utf-8") as f:
            return sum(1 for _ in f)
    except (OSError, TypeError):
        return 0


def build_model(cfg: TrainConfig, num_classes: int, pm, log=print) -> tuple[nn.Module, dict]:
    """The architecture with ``num_classes`` outputs (any model source: registered, torchvision, ``timm:NAME``,
    ``file.py:factory``; the head sized for the data), and the layers of ``cfg.weights`` that fit it."""
    spec = resolve_spec(cfg.model, registry.models(pm), pm)
    options = cfg.arch_options()
    module = spec.build(num_classes, **options)
    if cfg.weights.lower() == "none":
        return module, options
    if is_weights_file(cfg.weights):
        state, source = read_checkpoint(cfg.weights)["state_dict"], cfg.weights
    elif spec.family == "file" and cfg.weights.upper() == "DEFAULT":
        log(f"weights: as `{cfg.model}` made them (the head sized for {num_classes} classes)")
        return module, options
    else:
        loaded = pretrained(spec, cfg.weights)
        state, source = loaded.module.state_dict(), loaded.source
    exclude = tuple(f"{name}." for name in cfg.transfer_exclude)
    if cfg.transfer == "backbone":
        exclude += (head_name(module) + ".",)
    report = transfer_state(module, state, exclude=exclude)
    log(f"weights from {source}: {report.summary()}")
    return module, options


def build_regularizer(cfg: TrainConfig, module: nn.Module, source: nn.Module, example: torch.Tensor, pm):
    """The regulariser ``cfg.reg`` built on ``module`` and its frozen starting copy ``source``."""
    specs = registry.regularizers(pm)
    if cfg.reg not in specs:
        import difflib

        close = difflib.get_close_matches(cfg.reg, specs, n=1, cutoff=0.5)
        hint = f"did you mean `{close[0]}`? " if close else ""
        raise XvizError(f"unknown regulariser `{cfg.reg}`: {hint}choose none or one of {', '.join(sorted(specs)) or '(none registered)'}")
    spec = specs[cfg.reg]
    source.eval().requires_grad_(False)
    try:
        return spec.build(model=module, source=source, head=head_name(module), example=example, **cfg.reg_options)
    except TypeError as exc:
        raise XvizError(f"regulariser `{cfg.reg}` does not accept the options {cfg.reg_options}: {exc}") from None


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lonely_last_batch(module: nn.Module, cfg: TrainConfig, world: distributed.World, per_rank: int) -> str:
    """Why each epoch's last batch must be left out ("" if it need not): it would hold one image per
    process and BatchNorm normalising over each process's own batch cannot train on one image
    ("Expected more than 1 value per channel"). Settings where every batch would hold one are refused."""
    if (cfg.sync_bn and world.distributed) or not any(isinstance(m, _BatchNorm) for m in module.modules()):
        return ""
    each = " per process" if world.distributed else ""
    if cfg.batch_size == 1 or per_rank == 1:
        fix = "a --batch-size of 2 or more" if cfg.batch_size == 1 else "more training images"
        raise XvizError(f"`{cfg.model}` has BatchNorm layers, which cannot train on batches of one image{each}: "
                        f"use {fix}" + (" or --sync-bn" if world.distributed else ""))
    if per_rank % cfg.batch_size != 1:
        return ""
    return (f"the last batch of every epoch would hold 1 image{each}, on which BatchNorm cannot train: it is left "
            f"out ({per_rank - 1} of {per_rank} images{each} per epoch)")


@unlocks_run_folders
def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, pm=None, log=print) -> TrainResult:
    """Train as ``cfg`` says, writing a run folder at ``cfg.out`` (locked meanwhile); ``resume`` repairs
    it and continues its newest checkpoint exactly (or says the run is finished); ``overwrite``
    replaces a run already there. Under torchrun every process calls this: each
    trains and tests its shard, the numbers reported are the sums over all, rank 0 logs and writes."""
    pm = pm or registry.default_plugin_manager()
    device = torch_device(cfg.device)
    world = distributed.setup(device.type)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    log = log if world.main else (lambda *a, **k: None)
    finished = None
    with distributed.every_rank_alike(world, device):
        run = RunFolder(cfg.out, cfg.keep)
        state = run.open(cfg.to_dict(), resume=resume, overwrite=overwrite, log=log) if world.main else \
            (run.resume_point() if resume else None)
        if state is not None:
            saved = TrainConfig(**state["config"])
            if saved.model != cfg.model or dict(state.get("arch_options") or {}) != cfg.arch_options():
                raise XvizError(f"`{state['path']}` is a run of model `{state['arch']}`, not `{cfg.model}`: "
                                "resume with the run's own settings (--resume alone) or start a new --out")
            start = state["training"]["epoch"] + 1
            if start > cfg.epochs:
                best = max((h["test_acc"] for h in state["history"]), default=0.0)
                log(f"run `{cfg.out}` already finished: {start - 1}/{cfg.epochs} epochs, best test accuracy "
                    f"{100 * best:.2f}%; nothing to do")
                finished = TrainResult(Path(cfg.out), list(state["history"]), best, finished_before=True,
                                       main=world.main)
        if finished is None:
            _seed_everything(cfg.seed)
            train_set, test_set, classes, pre = build_data(cfg, pm, run.root)
            if world.main:
                record_data(run.root, train_set, test_set, log if state is None else (lambda *a: None))
            module, arch_options = build_model(cfg, len(classes), pm, log if state is None else (lambda *a: None))
            sampler = DistributedSampler(train_set, world.size, world.rank, shuffle=True, seed=cfg.seed)
            lonely = lonely_last_batch(module, cfg, world, len(sampler))
    if finished is not None:
        distributed.teardown(world)
        return finished
    source = copy.deepcopy(module) if cfg.reg != "none" else None  # the starting point, before any resume
    if state is None:
        processes = f" x {world.size} processes" if world.distributed else ""
        log(f"training `{cfg.model}` on `{cfg.dataset}` ({len(train_set)} train / {len(test_set)} test images) for "
            f"{cfg.epochs} epochs on {device}{processes} -> {cfg.out}/")
    if lonely:
        log(lonely)
    synced_bn = cfg.sync_bn and world.distributed
    if synced_bn:
        module = distributed.convert_sync_batchnorm(module, device.type)
    use_cuda = device.type == "cuda"
    channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and use_cuda)
    module.to(device)
    if channels_last:
        module.to(memory_format=torch.channels_last)
    regularizer = None
    if source is not None:
        source.to(device)
        if channels_last:
            source.to(memory_format=torch.channels_last)
        example = torch.zeros(2, *test_set[0][0].shape, device=device)
        with distributed.every_rank_alike(world, device):
            regularizer = build_regularizer(cfg, module, source, example, pm).to(device)
        log(f"regulariser `{cfg.reg}` x {cfg.reg_lambda:g}" + (f" with {cfg.reg_options}" if cfg.reg_options else ""))
    amp_dtype = None
    if cfg.amp == "auto" and use_cuda:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    generator = torch.Generator()
    loader_args = dict(num_workers=cfg.workers, pin_memory=use_cuda, persistent_workers=cfg.workers > 0,
                       collate_fn=getattr(train_set, "collate_fn", None))
    # One process with batch B*N sees the same batches as N processes with batch B (the union of theirs).
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, generator=generator,
                              drop_last=bool(lonely), **loader_args)
    test_loader = DataLoader(test_set, batch_size=max(cfg.batch_size, 128),
                             sampler=distributed.ShardSampler(len(test_set), world), **loader_args)
    with distributed.every_rank_alike(world, device):
        freeze = FreezeSchedule(module, cfg.unfreeze, cfg.train_bn)
        optimizer = make_optimizer(module, cfg)
    extra = [p for p in regularizer.parameters() if p.requires_grad] if regularizer is not None else []
    if extra:
        optimizer.add_param_group({"params": extra, "lr": cfg.lr, "name": "regularizer", "weight_decay": 0.0})
    scheduler = make_scheduler(optimizer, cfg, len(train_loader))
    model = nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if use_cuda else None) \
        if world.distributed else module

    history: list[dict] = []
    start = 1
    if state is not None:
        module.load_state_dict(state["state_dict"])
        t = state["training"]
        optimizer.load_state_dict(t["optimizer"])
        scheduler.load_state_dict(t["scheduler"])
        scaler.load_state_dict(t["scaler"])
        if regularizer is not None and t.get("regularizer") is not None:
            regularizer.load_state_dict(t["regularizer"])
        set_rng_state(t["rng"])
        history, start = list(state["history"]), t["epoch"] + 1
        log(f"resuming `{cfg.out}` from {Path(state['path']).name}: epoch {start}/{cfg.epochs}")
    best_acc = max((h["test_acc"] for h in history), default=-1.0)
    meta = dict(arch=cfg.model, class_names=classes, preprocessing=pre, config=cfg.to_dict(),
                arch_options=arch_options)

    for epoch in range(start, cfg.epochs + 1):
        log(freeze.apply(epoch))
        model.train()
        freeze.set_bn_modes()
        generator.manual_seed(cfg.seed * 100_003 + epoch)  # workers' seeds do not depend on resuming
        sampler.set_epoch(epoch)  # nor does the epoch's order
        began = time.time()
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False,
                   disable=not world.main)
        undecodable = _lines(getattr(train_set, "skip_log", None))
        sums = _train_steps(model, bar, optimizer, scheduler, scaler, regularizer, cfg, epoch, history,
                            dict(device=device, autocast=autocast, channels_last=channels_last, world=world))
        _report_undecodable(train_set, undecodable, log)
        loss_sum, correct, seen, reg_sum = distributed.all_sum(world, sums, device)
        seen = max(seen, 1)
        if not synced_bn:
            distributed.broadcast_buffers(world, module)  # every rank tests the model rank 0 saves
        test_loss, test_acc = run_test_epoch(module, test_loader, device, autocast, channels_last, world)
        row = {"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / seen, "test_loss": test_loss,
               "test_acc": test_acc, "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.time() - began, 3)}
        if regularizer is not None:
            row["train_reg"] = reg_sum / seen
        history.append(row)
        is_best = test_acc > best_acc
        best_acc = max(best_acc, test_acc)
        if world.main:
            training = {"epoch": epoch, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(), "rng": rng_state()}
            if regularizer is not None:
                training["regularizer"] = regularizer.state_dict()
            run.commit(epoch, dict(meta, state_dict=module.state_dict(), history=history), training)
        log(f"epoch {epoch}/{cfg.epochs} - train loss {row['train_loss']:.4f} - train acc {100 * row['train_acc']:.2f}%"
            f" - test loss {test_loss:.4f} - test acc {100 * test_acc:.2f}% - {row['seconds']:.0f}s"
            + (" - best" if is_best else ""))
        distributed.barrier(world)
    if regularizer is not None:
        regularizer.close()
    distributed.teardown(world)
    return TrainResult(Path(cfg.out), history, best_acc, main=world.main)


def _train_steps(model, bar, optimizer, scheduler, scaler, regularizer, cfg: TrainConfig, epoch: int,
                 history: list[dict], where: dict) -> list[float]:
    """The steps of one epoch over ``bar`` (the tqdm-wrapped loader); ``where`` holds ``device``,
    ``autocast``, ``channels_last`` and ``world``. Returns this process's sums: loss, correct, seen,
    regulariser. A batch left empty by images that failed to decode is passed over."""
    device, autocast, world = where["device"], where["autocast"], where["world"]
    seen, correct, loss_sum, reg_sum = 0, 0, 0.0, 0.0
    for step, (x, y) in enumerate(bar, 1):
        if y.numel() == 0:  # every image of the batch failed to decode
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if where["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            if regularizer is not None:
                penalty = regularizer.penalty(x).float()
                loss = loss + cfg.reg_lambda * penalty
        loss_value = loss.item()
        if distributed.any_rank(world, not math.isfinite(loss_value), device):
            bar.close()
            distributed.stop_together(world, _not_finite(loss_value, epoch, step, len(bar), optimizer, history,
                                                         cfg.out))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        n = y.numel()
        seen += n
        loss_sum += loss_value * n
        correct += (logits.argmax(1) == y).sum().item()
        if regularizer is not None:
            reg_sum += penalty.item() * n
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{100 * correct / seen:.2f}%")  # this process's
    bar.close()
    return [loss_sum, correct, seen, reg_sum]


def _report_undecodable(train_set, before: int, log) -> None:
    """One line when images failed to decode during the epoch (the dataset appended them to its skip log)."""
    count = _lines(getattr(train_set, "skip_log", None)) - before
    if count:
        many = count > 1
        log(f"{count} image{'s' if many else ''} could not be decoded and {'were' if many else 'was'} left out of "
            f"{'their' if many else 'its'} batch (listed in {train_set.skip_log})")


def _not_finite(loss: float, epoch: int, step: int, steps: int, optimizer, history: list[dict], out) -> XvizError:
    """The one line that stops a run whose loss is NaN or infinite (before the step that would apply it)."""
    value = f" ({loss})" if not math.isfinite(loss) else " (on another process)"
    kept = (f"`{out}` keeps epoch {history[-1]['epoch']} (best.pt, last.pt, its checkpoint)" if history
            else "nothing was saved")
    return XvizError(f"the training loss is not finite{value} at epoch {epoch}, step {step} of {steps} "
                     f"(lr {optimizer.param_groups[0]['lr']:.3g}): training stopped and {kept}; "
                     "start again with a lower --lr")
