"""Input attributions through captum: integrated gradients, saliency, guided backprop, guided
GradCAM, occlusion, and their noise-tunnel (SmoothGrad) versions.

Each method explains every image for every target in ``ctx.targets`` and returns one map per image
and target at the input's resolution, (N, K, H, W), so it flows into the same ``Explanation`` and
renderers as the CAM methods. Signed attributions (``signed = True``) are reduced over the colour
channels by summing and drawn with a diverging colormap; saliency maps are unsigned.

Memory is bounded: the (image, target) pairs are flattened into rows and sent to the model in
chunks, so the largest batch the model sees is ``internal_batch_size`` (integrated gradients,
noise tunnels) or ``batch_size`` (occlusion) rows, whatever the number of images and targets.
Noise methods seed torch's generator with ``seed`` before each (image, target) row, inside
``torch.random.fork_rng``: a map is reproducible, does not depend on the other images of the batch
nor on the number of targets (``topk``), and the global RNG is left as found. captum's hooks (on
``nn.ReLU`` modules for guided backprop, on the target layer for guided GradCAM) are removed by
captum before returning.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn

from xviz.errors import XvizError
from xviz.capture import find_layer, first_output
from xviz.methods import Context, Method


class _Scores(nn.Module):
    """The model with its output reduced to class scores (``first_output``), as captum needs."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return first_output(self.model(x))


@contextlib.contextmanager
def _quiet():
    """Silence captum's informational warnings ("Setting backward hooks on ReLU activations", inputs
    that did not require grad): xviz already guarantees both."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"captum(\.|$)")
        warnings.filterwarnings("ignore", message=r".*(backward hooks|require gradients|requires_grad).*")
        yield


@contextlib.contextmanager
def _copied_output(layer: nn.Module):
    """While captum records ``layer``: hand a copy of its output on, so what captum keeps (and marks as
    requiring grad) is never a tensor the caller also holds (the input of an ``nn.Identity`` or of an
    in-place layer), which an in-place op of the caller would change."""
    handle = layer.register_forward_hook(lambda module, args, out: out.clone() if torch.is_tensor(out) else None)
    try:
        yield
    finally:
        handle.remove()


def _rows(ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
    """(N*K, C, H, W) inputs and (N*K,) targets: image n's k-th target is row n*K + k."""
    x = ctx.inputs.detach()
    k = ctx.targets.shape[1]
    return x.repeat_interleave(k, dim=0), ctx.targets.reshape(-1).to(x.device)


def _unrows(maps: torch.Tensor, ctx: Context) -> torch.Tensor:
    """(N*K, H, W) -> (N, K, H, W)."""
    n, k = ctx.targets.shape
    return maps.reshape(n, k, *maps.shape[-2:])


def _positive(name: str, value, allow_none: bool = False, minimum: float = 1) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise XvizError(f"`{name}={value!r}` must be a number >= {minimum}")


def _needs_relu_modules(method: str, model: nn.Module) -> None:
    if not any(isinstance(m, nn.ReLU) for m in model.modules()):
        raise XvizError(f"`{method}` overrides the gradient of nn.ReLU modules and `{type(model).__name__}` has none "
                        "(functional relu or other activations): use integrated-gradients or saliency")


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    """Seed the global RNG (which captum's noise tunnel draws from) and restore it afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class IntegratedGradients(Method):
    """Integrated gradients (Sundararajan et al., ICML 2017), through ``captum.attr.IntegratedGradients``.

    ``IG_c(x) = (x_c - x'_c) * mean_{s=1..m} dS_t/dx_c (x' + a_s (x - x'))`` with a Gauss-Legendre rule
    over ``a`` in [0, 1] (``n_steps`` = m points), baseline ``x' = baseline`` (0 in the model's
    normalised input space: the dataset's mean colour);  ``M_ij = sum_c IG_cij`` (signed).

    Completeness: ``sum_ij M_ij ~= S_t(x) - S_t(x')``. The N*K (image, target) rows are split so
    that the model never sees more than ``internal_batch_size`` inputs at once.
    """

    name = "integrated-gradients"
    reference = "https://arxiv.org/abs/1703.01365"
    uses_layer = False
    signed = True

    def __init__(self, n_steps: int = 50, internal_batch_size: int = 32, baseline: float = 0.0,
                 method: str = "gausslegendre"):
        _positive("n_steps", n_steps)
        _positive("internal_batch_size", internal_batch_size)
        self.n_steps, self.internal_batch_size = int(n_steps), int(internal_batch_size)
        self.baseline, self.method = float(baseline), method

    def attribute(self, scores: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(R, C, H, W) attributions of rows ``x`` for targets ``t``, in chunks of internal_batch_size rows."""
        from captum.attr import IntegratedGradients as CaptumIG

        ig = CaptumIG(scores)
        out = []
        for start in range(0, len(x), self.internal_batch_size):
            xs, ts = x[start:start + self.internal_batch_size], t[start:start + self.internal_batch_size]
            out.append(ig.attribute(xs, baselines=self.baseline, target=ts, n_steps=self.n_steps,
                                    method=self.method, internal_batch_size=self.internal_batch_size).detach())
        return torch.cat(out)

    def compute(self, ctx: Context) -> torch.Tensor:
        x, t = _rows(ctx)
        with _quiet():
            return _unrows(self.attribute(_Scores(ctx.model), x, t).sum(dim=1), ctx)


def _per_target(ctx: Context, attribute) -> torch.Tensor:
    """(N, K, H, W): ``attribute(targets[:, k]) -> (N, H, W)`` for each of the K targets, captum quiet."""
    with _quiet():
        return torch.stack([attribute(ctx.targets[:, k]) for k in range(ctx.targets.shape[1])], dim=1)


class Saliency(Method):
    """Saliency (Simonyan et al., ICLR Workshop 2014), through ``captum.attr.Saliency(abs=True)``.

    ``M_ij = max_c | dS_t / dx_cij |`` (unsigned).
    """

    name = "saliency"
    reference = "https://arxiv.org/abs/1312.6034"
    uses_layer = False

    def compute(self, ctx: Context) -> torch.Tensor:
        from captum.attr import Saliency as CaptumSaliency

        saliency, x = CaptumSaliency(_Scores(ctx.model)), ctx.inputs.detach()
        return _per_target(ctx, lambda t: saliency.attribute(x, target=t, abs=True).detach().amax(dim=1))


class GuidedBackprop(Method):
    """Guided backpropagation (Springenberg et al., ICLR Workshop 2015), through
    ``captum.attr.GuidedBackprop``.

    The gradient ``dS_t/dx`` with every ReLU's backward replaced by
    ``grad_in = ReLU(grad_out) * [z > 0]`` (``z`` the ReLU's input: only positive gradients through
    active units);  ``M_ij = sum_c GB_cij`` (signed). captum overrides ``nn.ReLU`` modules only
    (in-place ones included); a model with no ``nn.ReLU`` module is refused.
    """

    name = "guided-backprop"
    reference = "https://arxiv.org/abs/1412.6806"
    uses_layer = False
    signed = True

    def check(self, model: nn.Module, pm=None) -> None:
        _needs_relu_modules(self.name, model)

    def compute(self, ctx: Context) -> torch.Tensor:
        from captum.attr import GuidedBackprop as CaptumGB

        gb, x = CaptumGB(_Scores(ctx.model)), ctx.inputs.detach()
        return _per_target(ctx, lambda t: gb.attribute(x, target=t).detach().sum(dim=1))


class GuidedGradCAM(Method):
    """Guided Grad-CAM (Selvaraju et al., ICCV 2017), through ``captum.attr.GuidedGradCam``.

    ``L = ReLU(sum_k w_k A_k)`` with ``w_k = mean_ij G_kij`` at the target layer (GradCAM),
    upsampled bilinearly to the input size;  ``M_ij = L_ij * sum_c GB_cij`` with ``GB`` guided
    backprop's input gradient (signed).
    """

    name = "guided-gradcam"
    reference = "https://arxiv.org/abs/1610.02391"
    uses_layer = True
    signed = True

    def check(self, model: nn.Module, pm=None) -> None:
        _needs_relu_modules(self.name, model)

    def compute(self, ctx: Context) -> torch.Tensor:
        from captum.attr import GuidedGradCam as CaptumGGC

        layer = find_layer(ctx.model, ctx.layer)
        ggc, x = CaptumGGC(_Scores(ctx.model), layer), ctx.inputs.detach()
        with _copied_output(layer):
            return _per_target(ctx, lambda t: ggc.attribute(x, target=t, interpolate_mode="bilinear").detach().sum(dim=1))


class Occlusion(Method):
    """Occlusion (Zeiler & Fergus, ECCV 2014), through ``captum.attr.Occlusion``.

    A ``window`` x ``window`` patch spanning all channels slides with ``stride``; for each position
    ``p``, ``d_p = S_t(x) - S_t(x with the patch set to baseline)``;
    ``M_ij = mean of d_p over the positions p whose patch covers ij`` (signed; captum gives this
    value to every channel, xviz takes their mean, i.e. that value). Defaults scale with the input:
    ``window = max(2, round(min(H, W) / 8))``, ``stride = max(1, window // 2)``, so a 64 px and a
    224 px image both cost about 15 x 15 forward passes per target. At most ``batch_size`` occluded
    images go through the model at once.
    """

    name = "occlusion"
    reference = "https://arxiv.org/abs/1311.2901"
    uses_layer = False
    signed = True

    def __init__(self, window: int | None = None, stride: int | None = None, baseline: float = 0.0,
                 batch_size: int = 64):
        _positive("window", window, allow_none=True)
        _positive("stride", stride, allow_none=True)
        _positive("batch_size", batch_size)
        self.window, self.stride, self.baseline, self.batch_size = window, stride, float(baseline), int(batch_size)

    def sizes(self, height: int, width: int) -> tuple[int, int]:
        window = self.window or max(2, round(min(height, width) / 8))
        stride = self.stride or max(1, window // 2)
        if window > min(height, width):
            raise XvizError(f"occlusion window {window} is larger than the {height}x{width} input: "
                            f"give a window of at most {min(height, width)}")
        return int(window), int(stride)

    def compute(self, ctx: Context) -> torch.Tensor:
        from captum.attr import Occlusion as CaptumOcclusion

        x, t = _rows(ctx)
        c, h, w = x.shape[1:]
        window, stride = self.sizes(h, w)
        occlusion = CaptumOcclusion(_Scores(ctx.model))
        out = []
        with _quiet():
            for start in range(0, len(x), self.batch_size):
                xs, ts = x[start:start + self.batch_size], t[start:start + self.batch_size]
                out.append(occlusion.attribute(xs, sliding_window_shapes=(c, window, window),
                                               strides=(c, stride, stride), baselines=self.baseline, target=ts,
                                               perturbations_per_eval=max(1, self.batch_size // len(xs))).detach())
        return _unrows(torch.cat(out).mean(dim=1), ctx)


class _NoiseTunnel(Method):
    """SmoothGrad over a base attribution: the mean of its maps at ``samples`` noisy copies
    ``x + eps_s``, ``eps_s ~ N(0, sigma^2)``, ``sigma = stdev * (max x - min x)`` per image
    (Smilkov et al. 2017's noise level). Each (image, target) row is one captum call preceded by
    ``torch.manual_seed(seed)``: a row draws exactly the noise of a single-target call for its image,
    whatever the other images in the batch and the other targets (``topk``), and the K targets of an
    image share the same noisy copies."""

    uses_layer = False

    def __init__(self, samples: int = 32, stdev: float = 0.15, seed: int = 0, internal_batch_size: int = 32):
        _positive("samples", samples)
        _positive("stdev", stdev, minimum=0)
        _positive("internal_batch_size", internal_batch_size)
        self.samples, self.stdev, self.seed = int(samples), float(stdev), int(seed)
        self.internal_batch_size = int(internal_batch_size)

    def base(self, scores: nn.Module):
        raise NotImplementedError

    def extra(self) -> dict:
        return {}

    def reduce(self, attributions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def compute(self, ctx: Context) -> torch.Tensor:
        from captum.attr import NoiseTunnel

        tunnel = NoiseTunnel(self.base(_Scores(ctx.model)))
        x, t = _rows(ctx)
        out = []
        with _quiet(), _seeded(self.seed, x.device):
            for row in range(len(x)):
                torch.manual_seed(self.seed)  # the noise of a single-target call, whatever the row's place
                sigma = self.stdev * float(x[row].max() - x[row].min())
                out.append(tunnel.attribute(
                    x[row:row + 1], nt_type="smoothgrad", nt_samples=self.samples, stdevs=sigma,
                    nt_samples_batch_size=self.internal_batch_size, target=t[row:row + 1], **self.extra()).detach())
        return _unrows(self.reduce(torch.cat(out)), ctx)


class SmoothGrad(_NoiseTunnel):
    """SmoothGrad (Smilkov et al., 2017) of saliency, through ``captum.attr.NoiseTunnel(Saliency)``.

    ``M_ij = max_c mean_{s=1..n} | dS_t/dx_cij (x + eps_s) |``, ``eps_s ~ N(0, sigma^2)``,
    ``sigma = stdev * (max x - min x)`` per image, ``n = samples`` (unsigned). Noise is seeded
    (``seed``) per (image, target): the same map alone, in a batch or among ``topk`` targets. At
    most ``internal_batch_size`` noisy images go through the model at once.
    """

    name = "smoothgrad"
    reference = "https://arxiv.org/abs/1706.03825"

    def base(self, scores):
        from captum.attr import Saliency as CaptumSaliency

        return CaptumSaliency(scores)

    def extra(self):
        return {"abs": True}

    def reduce(self, attributions):
        return attributions.amax(dim=1)


class SmoothIntegratedGradients(_NoiseTunnel):
    """SmoothGrad of integrated gradients (Smilkov et al., 2017; Sundararajan et al., 2017), through
    ``captum.attr.NoiseTunnel(IntegratedGradients)``.

    ``M_ij = sum_c mean_{s=1..n} IG_cij(x + eps_s)`` with a zero baseline and ``n_steps`` Gauss-Legendre
    points, ``eps_s ~ N(0, sigma^2)``, ``sigma = stdev * (max x - min x)`` per image, ``n = samples``
    (signed). Seeded; at most ``internal_batch_size`` images go through the model at once.
    """

    name = "integrated-gradients-smooth"
    reference = "https://arxiv.org/abs/1706.03825"
    signed = True

    def __init__(self, samples: int = 10, stdev: float = 0.15, seed: int = 0, internal_batch_size: int = 32,
                 n_steps: int = 20, baseline: float = 0.0):
        super().__init__(samples, stdev, seed, internal_batch_size)
        _positive("n_steps", n_steps)
        self.n_steps, self.baseline = int(n_steps), float(baseline)

    def base(self, scores):
        from captum.attr import IntegratedGradients as CaptumIG

        return CaptumIG(scores)

    def extra(self):
        return {"n_steps": self.n_steps, "baselines": self.baseline, "method": "gausslegendre",
                "internal_batch_size": self.internal_batch_size}

    def reduce(self, attributions):
        return attributions.sum(dim=1)

