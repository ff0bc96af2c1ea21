"""The fast path of explaining (``fast=True``, ``xviz explain --fast``): what runs faster than the fp32 floor.

* **channels_last** (NHWC) weights and inputs: the convolution kernels of oneDNN (CPU) and cuDNN (GPU)
  run faster in this layout; values are those of the fp32 network up to summation order (~1e-6).
* **bf16 autocast** of the forward pass, where the device has fast bf16: on a CUDA device that supports
  bf16. Not on a CPU: measured on a 2-core AVX-512-BF16 CPU, bf16 autocast made resnet18/resnet50
  forward + gradient slower than fp32 (see ``benchmarks/fast_speed.py``), so on a CPU ``fast`` means
  channels_last only. Captured activations and gradients are cast back to fp32 before any method uses
  them, so the maps differ from fp32 by bf16's rounding of the network's values only.
* **torch.compile** (``compile=True``, ``--compile``): the forward pass compiled by TorchInductor; the
  first batch pays the compilation (cached on disk between runs in ``TORCHINDUCTOR_CACHE_DIR``, by default
  under the system's temporary folder).

The model is left as found: its weights are put back in their own memory layout on exit.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Speed:
    """How the forward pass runs: weights and inputs in ``channels_last``, the forward under autocast to
    ``autocast`` (None: fp32), the model ``compiled`` with torch.compile."""

    channels_last: bool = False
    autocast: torch.dtype | None = None
    compiled: bool = False

    def describe(self) -> str:
        parts = (["channels_last"] if self.channels_last else []) + \
            ([f"{str(self.autocast).removeprefix('torch.')} autocast"] if self.autocast else []) + \
            (["torch.compile"] if self.compiled else [])
        return ", ".join(parts) or "fp32 (eager, contiguous)"


FP32 = Speed()


def choose_speed(device: torch.device | str, fast: bool = False, compiled: bool = False) -> Speed:
    """The settings ``fast`` stands for on ``device`` (see the module's docstring for the measurements)."""
    device = torch.device(device)
    if not fast:
        return Speed(compiled=compiled)
    bf16 = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return Speed(channels_last=True, autocast=torch.bfloat16 if bf16 else None, compiled=compiled)


@contextlib.contextmanager
def channels_last_weights(module: nn.Module, enabled: bool = True):
    """Inside: every 4-D parameter and buffer of ``module`` in ``channels_last``; on exit each tensor is
    given back its own storage (no copy back, and nothing else of the model changes)."""
    if not enabled:
        yield module
        return
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.dim() == 4]
    originals = [t.data for t in tensors]
    try:
        for t in tensors:
            t.data = t.data.contiguous(memory_format=torch.channels_last)
        yield module
    finally:
        for t, data in zip(tensors, originals):
            t.data = data


_COMPILED: dict[int, tuple[nn.Module, nn.Module]] = {}


def compiled(module: nn.Module) -> nn.Module:
    """``torch.compile(module)``, made once per module in this process."""
    key = id(module)
    if key not in _COMPILED or _COMPILED[key][0] is not module:
        _COMPILED[key] = (module, torch.compile(module))
    return _COMPILED[key][1]


def autocast(device: torch.device, speed: Speed):
    """The autocast context of the forward pass (a no-op for fp32)."""
    if speed.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=speed.autocast)
