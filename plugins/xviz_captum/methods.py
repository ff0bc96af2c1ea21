"""Input attributions through captum: integrated gradients, saliency, guided backprop, guided
GradCAM, occlusion, and their noise-tunnel (SmoothGrad) versions.

Each method explains every image for every target in ``ctx.targets`` and returns one map per image
and target at the input's resolution, (N, K, H, W), so it flows into the same ``Explanation`` and
renderers as the CAM methods. Signed attributions (``signed = True``) are reduced over the colour
channels by summing and drawn with a diverging colormap; saliency maps are unsigned.

Memory is bounded: the (image, target) pairs are flattened into rows and sent to the model in
chunks, so the largest batch the model sees is ``internal_batch_size`` (integrated gradients,
noise tunnels) or ``batch_size`` (occlusion) rows, whatever the number of images and targets.
Saliency, guided backprop and guided GradCAM take their gradients from xviz's shared forward pass (the
same formulas as captum's, checked against it), the other methods call captum. Noise methods seed torch's generator with ``seed`` before each (image, target) row, inside
``torch.random.fork_rng``: a map is reproducible, does not depend on the other images of the batch
nor on the number of targets (``topk``), and the global RNG is left as found.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from xviz.errors import XvizError
from xviz.capture import first_output
from xviz.methods import Context, Method, target_gradients


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


class Saliency(Method):
    """Saliency (Simonyan et al., ICLR Workshop 2014), as ``captum.attr.Saliency(abs=True)``.

    ``M_ij = max_c | dS_t / dx_cij |`` (unsigned). The gradient comes from the shared forward pass
    (``ctx.input_gradients``): no forward of its own; equal to captum's map (tested).
    """

    name = "saliency"
    reference = "https://arxiv.org/abs/1312.6034"
    uses_layer = False
    uses_input_gradient = True

    def compute(self, ctx: Context) -> torch.Tensor:
        return ctx.input_gradients.abs().amax(dim=2)


class _GuidedReLUs:
    """While active, the gradient reaching the output of every ``nn.ReLU`` module is clamped at 0, so
    the ReLU's own backward gives ``ReLU(grad_out) * [z > 0]``: guided backpropagation, exactly the
    rule captum's ``GuidedBackprop`` applies through module backward hooks. Installed for the shared
    forward pass (``Method.observe``), it changes no gradient while inactive."""

    def __init__(self):
        self.active = False

    def _clamp(self, grad: torch.Tensor):
        return grad.clamp_min(0) if self.active else None

    @contextlib.contextmanager
    def installed(self, model: nn.Module):
        def hook(module, args, output):
            if torch.is_tensor(output) and output.requires_grad:
                output.register_hook(self._clamp)

        hook = torch.compiler.disable(hook)  # under torch.compile: runs eagerly, on the real tensors
        handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def gradients(self, ctx: Context) -> torch.Tensor:
        """(N, K, 3, H, W) guided gradients to the inputs, one call per batch (shared by the guided methods)."""
        def compute():
            self.active = True
            try:
                return target_gradients(ctx.logits, ctx.targets, ctx.inputs, retain_graph=True)
            finally:
                self.active = False

        return ctx.cached(("guided input gradients",), compute)


class GuidedBackprop(Method):
    """Guided backpropagation (Springenberg et al., ICLR Workshop 2015), as ``captum.attr.GuidedBackprop``.

    The gradient ``dS_t/dx`` with every ReLU's backward replaced by
    ``grad_in = ReLU(grad_out) * [z > 0]`` (``z`` the ReLU's input: only positive gradients through
    active units);  ``M_ij = sum_c GB_cij`` (signed). Like captum, only ``nn.ReLU`` modules (in-place
    ones included) are overridden; a model with no ``nn.ReLU`` module is refused. The gradient comes
    from the shared forward pass; equal to captum's map (tested).
    """

    name = "guided-backprop"
    reference = "https://arxiv.org/abs/1412.6806"
    uses_layer = False
    uses_input_gradient = True
    signed = True

    def check(self, model: nn.Module, pm=None) -> None:
        _needs_relu_modules(self.name, model)

    def observe(self, model: nn.Module):
        return _GuidedReLUs().installed(model)

    def compute(self, ctx: Context) -> torch.Tensor:
        return ctx.observed[self.name].gradients(ctx).sum(dim=2)


class GuidedGradCAM(GuidedBackprop):
    """Guided Grad-CAM (Selvaraju et al., ICCV 2017), as ``captum.attr.GuidedGradCam``.

    ``L = ReLU(sum_k w_k A_k)`` with ``w_k = mean_ij G_kij`` at the target layer (GradCAM),
    upsampled bilinearly (``align_corners=False``) to the input size;  ``M_ij = L_ij * sum_c GB_cij``
    with ``GB`` guided backprop's input gradient (signed). Layer gradient and guided gradient both come
    from the shared forward pass; equal to captum's map (tested).
    """

    name = "guided-gradcam"
    reference = "https://arxiv.org/abs/1610.02391"
    uses_layer = True

    def compute(self, ctx: Context) -> torch.Tensor:
        weights = ctx.gradients.mean(dim=(3, 4))  # (N, K, C)
        cam = torch.relu(torch.einsum("nkc,nchw->nkhw", weights, ctx.activations))
        cam = F.interpolate(cam, size=tuple(ctx.inputs.shape[-2:]), mode="bilinear", align_corners=False)
        return cam * ctx.observed[self.name].gradients(ctx).sum(dim=2)


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

