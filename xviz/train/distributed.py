"""Multi-process training on PyTorch's own engine: ``torchrun --nproc_per_node N -m xviz train ...``.

torchrun sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; each process trains a shard of every
epoch (``DistributedSampler``) in a ``DistributedDataParallel`` model and tests a shard of the test
set (:class:`ShardSampler`); sums and counts are added over all processes (:func:`all_sum`), so
every number reported is the whole run's; only rank 0 logs and writes. The backend is NCCL on
CUDA and gloo on the CPU. ``sync_bn`` makes BatchNorm normalise over the batches of all processes
together (:func:`convert_sync_batchnorm`).
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import Sampler

from xviz.errors import XvizError


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1
    owns_group: bool = False  # setup() created the process group (and teardown() destroys it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def setup(device_type: str) -> World:
    """Join the process group when launched by torchrun (or use the caller's); a single process otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    joined = dist.is_available() and dist.is_initialized()
    if size <= 1 and not joined:
        return World()
    created = not joined
    if created:
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local)
    return World(dist.get_rank(), local, dist.get_world_size(), created)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def teardown(world: World) -> None:
    if world.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(world: World, values: list[float], device) -> list[float]:
    """``values`` added element-wise over all processes (float64), the same list on every rank."""
    if not world.distributed:
        return list(values)
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def any_rank(world: World, flag: bool, device) -> bool:
    """True on every rank when ``flag`` is true on at least one."""
    return all_sum(world, [float(flag)], device)[0] > 0


def stop_together(world: World, error: Exception):
    """Stop every rank on ``error``, which all of them met at the same step: rank 0 raises it (the
    command prints its one line), the others leave with exit status 2 without printing."""
    teardown(world)
    if world.distributed and not world.main:
        raise SystemExit(2)
    raise error


@contextlib.contextmanager
def every_rank_alike(world: World, device):
    """A block every rank runs alike (settings, data, model). Afterwards the ranks agree (one
    all-reduce): if any met an XvizError, all stop, and the error is said once, by rank 0, or by the
    ranks that met it when rank 0 did not (e.g. data missing on one machine)."""
    error = None
    try:
        yield
    except XvizError as exc:
        error = exc
    if not world.distributed:
        if error is not None:
            raise error
        return
    failed, main_failed = all_sum(world, [error is not None, error is not None and world.main], device)
    if failed:
        teardown(world)
        if error is not None and (world.main or not main_failed):
            raise error
        raise SystemExit(2)


def broadcast_buffers(world: World, module: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics) on every rank: the model tested is the model saved."""
    if world.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + size, ...`` of ``length``: every index on exactly one rank, no padding
    (ranks may differ by one sample; evaluation adds sums and counts, so nothing is counted twice)."""

    def __init__(self, length: int, world: World):
        self.indices = range(world.rank, length, world.size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class _AllReduceSum(torch.autograd.Function):
    """Sum over all ranks; a rank's input gradient is the sum of all ranks' output gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class AllReduceBatchNorm(_BatchNorm):
    """BatchNorm over the batches of all processes together, where PyTorch's ``SyncBatchNorm`` does
    not run (it needs CUDA): a training forward adds, over all ranks, per channel ``sum(d)``,
    ``sum(d^2)`` and the count ``n`` of ``d = x - running_mean`` (one differentiable all-reduce) and
    normalises with ``mean = running_mean + sum(d)/n``, ``var = sum(d^2)/n - (sum(d)/n)^2``; running
    statistics take the unbiased ``var * n / (n - 1)``, as BatchNorm on the combined batch does.
    Evaluation, and a single process, is plain BatchNorm."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        channels, dims = input.shape[1], [0, *range(2, input.dim())]
        shape = [1, channels] + [1] * (input.dim() - 2)
        x = input.float()
        shift = self.running_mean.detach().float() if self.running_mean is not None else x.new_zeros(channels)
        d = x - shift.view(shape)
        total = _AllReduceSum.apply(torch.cat([d.sum(dims), (d * d).sum(dims), x.new_tensor([input.numel() / channels])]))
        count = total[-1]
        if count.item() <= 1:
            raise ValueError("Expected more than 1 value per channel when training")
        mean_d = total[:channels] / count
        var = (total[channels:2 * channels] / count - mean_d * mean_d).clamp(min=0)
        mean = shift + mean_d
        if self.track_running_stats and self.running_mean is not None:
            self.num_batches_tracked.add_(1)
            factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            with torch.no_grad():
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_((var * count / (count - 1)).to(self.running_var.dtype), factor)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """``module`` with every BatchNorm layer synchronised over all processes: PyTorch's
    ``SyncBatchNorm`` on CUDA, :class:`AllReduceBatchNorm` elsewhere. In place, by class: each layer
    stays the same object with its parameters, statistics, state-dict keys, children and hooks (a
    plugin's gates keep working), and stays an instance of its own class (e.g. ``BatchNorm2d``)."""
    base = nn.SyncBatchNorm if device_type == "cuda" else AllReduceBatchNorm
    for layer in module.modules():
        if isinstance(layer, _BatchNorm) and not isinstance(layer, base):
            layer.__class__ = _synchronised(base, type(layer))
            layer.process_group = None  # nn.SyncBatchNorm's: the default group
    return module


@functools.cache
def _synchronised(base: type, cls: type) -> type:
    return type(f"Synchronised{cls.__name__}", (base, cls), {"__module__": __name__})
