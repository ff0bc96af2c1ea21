"""Freeze/unfreeze schedules, discriminative learning rates, optimisers and LR schedules.

Parameters are grouped by *group names*: ``all``; ``head`` (the model's last top-level child that
has parameters: ``fc``, ``classifier``); ``backbone`` (everything else); or any module name
(``layer4``, ``features.28``). A parameter belongs to the most specific group named in the config.

``unfreeze = {head = 1, all = 51}`` means: epochs 1-50 train only the head, from epoch 51 all.
``unfreeze = {head = 1, layer4 = 3, layer3 = 5, all = 7}`` is gradual unfreezing. With
``train_bn`` BatchNorm layers stay trainable (and keep updating statistics) while frozen.
"""

from __future__ import annotations

import bisect
import math

import torch
from torch import nn

from xviz.errors import XvizError

BN_TYPES = (nn.modules.batchnorm._BatchNorm,)  # every BatchNorm, synchronised ones included


def head_name(model: nn.Module) -> str:
    """The last top-level child with parameters: the classifier of every torchvision model."""
    named = [name for name, child in model.named_children() if any(True for _ in child.parameters())]
    if not named:
        raise XvizError("the model has no submodule with parameters to call its head")
    return named[-1]


def group_of(param_name: str, groups: list[str], head: str) -> str:
    """The most specific of ``groups`` that ``param_name`` falls in (``all`` when none)."""
    best, best_len = "all", -1
    for group in groups:
        if group == "all":
            hit, length = True, 0
        elif group == "head":
            hit, length = param_name.startswith(head + "."), len(head) + 1
        elif group == "backbone":
            hit, length = not param_name.startswith(head + "."), 1
        else:
            hit, length = param_name.startswith(group + "."), len(group) + 1
        if hit and length > best_len:
            best, best_len = group, length
    return best


def check_groups(model: nn.Module, groups) -> None:
    modules = {name for name, _ in model.named_modules() if name}
    for group in groups:
        if group not in ("all", "head", "backbone") and group not in modules:
            children = ", ".join(n for n, _ in model.named_children())
            raise XvizError(f"unknown parameter group `{group}`: use all, head, backbone or a module name ({children})")


def param_groups(model: nn.Module, base_lr: float, lr_mult: dict, weight_decay: float) -> list[dict]:
    """Optimizer parameter groups, one per named group, each with ``lr = base_lr * multiplier``."""
    check_groups(model, lr_mult)
    names = list(lr_mult)
    head = head_name(model) if {"head", "backbone"} & set(names) else ""
    grouped: dict[str, list] = {}
    for name, p in model.named_parameters():
        grouped.setdefault(group_of(name, names, head), []).append(p)
    return [{"params": ps, "lr": base_lr * float(lr_mult.get(g, 1.0)), "name": g, "weight_decay": weight_decay}
            for g, ps in grouped.items()]


class FreezeSchedule:
    """Which parameters train in each epoch, from ``unfreeze = {group: first_epoch}``."""

    def __init__(self, model: nn.Module, unfreeze: dict, train_bn: bool = True):
        check_groups(model, unfreeze)
        self.model, self.unfreeze, self.train_bn = model, dict(unfreeze), train_bn
        self.head = head_name(model) if {"head", "backbone"} & set(unfreeze) else ""

    def trainable_groups(self, epoch: int) -> list[str]:
        if not self.unfreeze:
            return ["all"]
        return [g for g, first in self.unfreeze.items() if first <= epoch]

    def apply(self, epoch: int) -> str:
        """Set ``requires_grad`` for ``epoch``; returns a log line of what trains."""
        open_groups = self.trainable_groups(epoch)
        frozen_bn = []
        total = trainable = 0
        for module_name, module in self.model.named_modules():
            is_bn = isinstance(module, BN_TYPES)
            for pname, p in module.named_parameters(recurse=False):
                full = f"{module_name}.{pname}" if module_name else pname
                on = any(group_of(full, [g], self.head) == g for g in open_groups) or (is_bn and self.train_bn)
                p.requires_grad_(on)
                total += p.numel()
                trainable += p.numel() * on
            if is_bn and not self.train_bn and not all(p.requires_grad for p in module.parameters(recurse=False)):
                frozen_bn.append(module)
        self.frozen_bn = frozen_bn
        what = ", ".join(open_groups) if open_groups else "nothing"
        bn = " (+ BatchNorm)" if self.train_bn and self.unfreeze and "all" not in open_groups else ""
        return f"epoch {epoch}: training {what}{bn}: {trainable:,} of {total:,} parameters"

    def set_bn_modes(self) -> None:
        """Call after ``model.train()``: frozen BatchNorm layers (train_bn off) keep their statistics."""
        for module in getattr(self, "frozen_bn", []):
            module.eval()


def make_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.lr, cfg.lr_mult, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_factor(cfg, steps_per_epoch: int):
    """``f(step) -> multiplier of each group's lr`` for the step-wise schedules (0-based steps)."""
    total = cfg.epochs * steps_per_epoch
    milestones = sorted(cfg.milestones)

    def factor(step: int) -> float:
        epoch = step // steps_per_epoch  # 0-based
        if cfg.scheduler == "step":
            return cfg.gamma ** (epoch // cfg.step_size)
        if cfg.scheduler == "multistep":  # as torch's MultiStepLR: decay once `epoch` epochs are done
            return cfg.gamma ** bisect.bisect_right(milestones, epoch)
        if cfg.scheduler == "halving":
            return 0.5 ** (epoch // cfg.halve_every)
        if cfg.scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        return 1.0

    return factor


def make_scheduler(optimizer, cfg, steps_per_epoch: int):
    """A scheduler stepped once per batch (so one-cycle and cosine are smooth)."""
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                                   total_steps=cfg.epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch))
