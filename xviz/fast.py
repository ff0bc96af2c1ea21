"""The fast path of explaining (``fast=True``, ``xviz explain --fast``): faster than the fp32 floor, maps
within 1e-2 of fp32.

* ``fast=True``: **channels_last** (NHWC) weights and inputs, fp32. oneDNN (CPU) and cuDNN (GPU) run
  convolutions faster in this layout; CAM maps equal fp32's within ~1e-5 (measured on resnet50, vgg16,
  densenet121, vit_b_16). Maps of pixel-level gradients (saliency, guided backprop) move more, up to
  3e-2 on vgg16: a ReLU whose input is within rounding of 0 switches the path of the gradient.
* ``fast="bf16"`` or ``"fp16"``: channels_last and the forward pass under **autocast** to that dtype.
  Not the default: measured on random-weight networks, GradCAM maps moved up to 3.8e-2 (bf16) and
  1.7e-2 (fp16) on vgg16, over the 1e-2 budget, and on this project's CPU (2 cores, AVX-512-BF16) bf16
  made resnet18/resnet50 slower than fp32. Activations and gradients are captured in fp32.
* ``compile=True`` (``--compile``): the forward pass through ``torch.compile`` (TorchInductor); the
  capture hooks run eagerly (a graph break at each captured layer). The first batch pays the
  compilation; Inductor caches compiled code on disk between runs (``TORCHINDUCTOR_CACHE_DIR``).

The model is left as found: its weights get their own memory back on exit. ``benchmarks/fast_speed.py``
measures the speed side by side with the fp32 floor.
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


AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def choose_speed(device: torch.device | str, fast: bool | str = False, compiled: bool = False) -> Speed:
    """The settings ``fast`` (False, True, ``"bf16"``, ``"fp16"``) stands for on ``device``."""
    from xviz.errors import XvizError

    if fast in (False, None, "", "off"):
        return Speed(compiled=compiled)
    if fast is True or fast == "on":
        return Speed(channels_last=True, compiled=compiled)
    if fast not in AUTOCAST:
        raise XvizError(f"fast=`{fast}` is not a fast mode: use True (channels_last), \"bf16\" or \"fp16\"")
    if torch.device(device).type not in ("cpu", "cuda"):
        raise XvizError(f"fast=`{fast}`: autocast runs on a CPU or a CUDA device, not {device}")
    return Speed(channels_last=True, autocast=AUTOCAST[fast], compiled=compiled)


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
    """``torch.compile(module)``, made once per module in this process (with buffer donation of compiled
    backwards turned off for the process: xviz's gradient calls may share one graph)."""
    from torch._functorch import config as functorch_config

    # several gradient calls share one graph (retain_graph): compiled backwards must not donate buffers
    functorch_config.donated_buffer = False
    key = id(module)
    if key not in _COMPILED or _COMPILED[key][0] is not module:
        _COMPILED[key] = (module, torch.compile(module))
    return _COMPILED[key][1]


def autocast(device: torch.device, speed: Speed):
    """The autocast context of the forward pass (a no-op for fp32)."""
    if speed.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=speed.autocast)
