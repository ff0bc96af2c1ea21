"""Class activation maps: GradCAM, GradCAM++, XGradCAM, HiResCAM, LayerCAM (gradients), EigenCAM
(activations only) and ScoreCAM (extra masked forward passes).

The gradient methods read the target layer's activation ``A`` (N, C, h, w) and the gradients
``G = dS/dA`` of each target's raw score ``S`` from the shared pass, so asking for several, or for
the top-k targets, costs one forward and one ``autograd.grad``. EigenCAM reads ``A`` alone.
"""

import torch
import torch.nn.functional as F

from xviz.capture import first_output
from xviz.methods import Context, Method


class GradCAM(Method):
    """GradCAM (Selvaraju et al., ICCV 2017).

    ``w_k = mean_ij G_kij``;  ``M = ReLU(sum_k w_k A_k)``.
    """

    name = "gradcam"
    reference = "https://arxiv.org/abs/1610.02391"

    def weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return gradients.mean(dim=(-2, -1))

    def compute(self, ctx: Context) -> torch.Tensor:
        a, g = ctx.activations, ctx.gradients  # (N, C, h, w), (N, K, C, h, w)
        w = self.weights(a, g)  # (N, K, C)
        return torch.relu(torch.einsum("nkc,nchw->nkhw", w, a))


class GradCAMPlusPlus(GradCAM):
    """GradCAM++ (Chattopadhay et al., WACV 2018), closed form of eq. 19 with first derivatives.

    ``alpha_kij = G^2 / (2 G^2 + sum_ab A_kab G^3) = 1 / (2 + S_k G_kij)`` where ``G != 0``
    (0 where ``G = 0`` or the denominator vanishes), ``S_k = sum_ab A_kab``;
    ``w_k = sum_ij alpha_kij ReLU(G_kij)``;  ``M = ReLU(sum_k w_k A_k)``.

    The ratio form has no stabilising epsilon, so maps do not depend on the scale of the scores
    (unlike pytorch-grad-cam's ``+1e-6``, which dominates when gradients are ~1e-7).
    """

    name = "gradcampp"
    reference = "https://arxiv.org/abs/1710.11063"

    def weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        s = activations.sum(dim=(-2, -1))[:, None, :, None, None]  # (N, 1, C, 1, 1)
        denominator = 2.0 + s * gradients
        ok = (gradients != 0) & (denominator != 0)
        alpha = torch.where(ok, 1.0 / torch.where(ok, denominator, torch.ones_like(denominator)),
                            torch.zeros_like(gradients))
        return (alpha * torch.relu(gradients)).sum(dim=(-2, -1))


class XGradCAM(GradCAM):
    """XGradCAM (Fu et al., BMVC 2020): channels weighted by activation-normalised gradients.

    ``w_k = sum_ij G_kij A_kij / sum_ab A_kab`` (0 where ``sum_ab A_kab = 0``);
    ``M = ReLU(sum_k w_k A_k)``.

    No stabilising epsilon (pytorch-grad-cam adds 1e-7, torchcam 1e-8 to the denominator).
    """

    name = "xgradcam"
    reference = "https://arxiv.org/abs/2008.02312"

    def weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        total = activations.sum(dim=(-2, -1))[:, None, :]  # (N, 1, C)
        numerator = torch.einsum("nkchw,nchw->nkc", gradients, activations)
        ok = total != 0
        return torch.where(ok, numerator / torch.where(ok, total, torch.ones_like(total)), torch.zeros_like(numerator))


class HiResCAM(Method):
    """HiResCAM (Draelos & Carin, 2020): the element-wise product of gradients and activations.

    ``M_ij = ReLU(sum_k G_kij A_kij)``: GradCAM without averaging the gradients over space, so the map
    is exactly the layer's contribution to the score for any head that is linear after the layer.
    """

    name = "hirescam"
    reference = "https://arxiv.org/abs/2011.08891"

    def compute(self, ctx: Context) -> torch.Tensor:
        return torch.relu(torch.einsum("nkchw,nchw->nkhw", ctx.gradients, ctx.activations))


class LayerCAM(Method):
    """LayerCAM (Jiang et al., IEEE TIP 2021): positive gradients as per-location weights.

    ``M_ij = ReLU(sum_k ReLU(G_kij) A_kij)``.
    """

    name = "layercam"
    reference = "https://doi.org/10.1109/TIP.2021.3089943"

    def compute(self, ctx: Context) -> torch.Tensor:
        return torch.relu(torch.einsum("nkchw,nchw->nkhw", torch.relu(ctx.gradients), ctx.activations))


class EigenCAM(Method):
    """EigenCAM (Muhammad & Yeasin, IJCNN 2020): the first principal component of the activations.

    Per image, ``X`` is the (h*w, C) activation matrix with each channel's spatial mean removed,
    ``v_1`` its first right singular vector, and ``p = X v_1`` (h*w values).
    **Sign convention**: the SVD's sign is arbitrary, so ``p`` is flipped when ``|min p| > |max p|``
    (the salient side is positive; pytorch-grad-cam's ``get_2d_projection_with_sign_correction``,
    Seg-Eigen-CAM eq. 13). ``M = ReLU(p)``. Gradient-free and class-agnostic: every target of an
    image gets the same map. The SVD runs in float64.
    """

    name = "eigencam"
    reference = "https://arxiv.org/abs/2008.00299"

    def compute(self, ctx: Context) -> torch.Tensor:
        a = ctx.activations.detach()
        n, c, h, w = a.shape
        x = torch.nan_to_num(a.double()).flatten(2).transpose(1, 2)  # (N, h*w, C)
        x = x - x.mean(dim=1, keepdim=True)
        _, _, vh = torch.linalg.svd(x, full_matrices=False)
        p = (x @ vh[:, 0, :, None]).squeeze(-1)  # (N, h*w)
        flip = p.amin(dim=1).abs() > p.amax(dim=1).abs()
        p = torch.where(flip[:, None], -p, p)
        maps = torch.relu(p).to(a.dtype).view(n, 1, h, w)
        return maps.expand(n, ctx.targets.shape[1], h, w)


class ScoreCAM(Method):
    """Score-CAM (Wang et al., CVPR Workshops 2020): channels weighted by the score of the image masked
    by them; no gradients.

    ``U_k`` = ``A_k`` upsampled bilinearly (``align_corners=False``) to the input size,
    ``H_k = (U_k - min U_k) / (max U_k - min U_k)`` (0 for a constant channel);
    ``s_k = S_t(X * H_k)``, the target's raw score of the masked input;
    ``w = softmax_k(s)`` (the baseline ``S_t(X_b)`` of the paper cancels in the softmax);
    ``M = ReLU(sum_k w_k A_k)``.

    Costs N * C extra forward passes, run without gradients in chunks of ``batch_size`` masked images
    (so memory does not grow with the batch); the K targets of an image are read from the same
    masked forwards.
    """

    name = "scorecam"
    reference = "https://arxiv.org/abs/1910.01279"

    def __init__(self, batch_size: int = 32):
        self.batch_size = batch_size

    def compute(self, ctx: Context) -> torch.Tensor:
        a = ctx.activations.detach()
        x = ctx.inputs.detach()
        n, c = a.shape[:2]
        size = tuple(x.shape[-2:])
        targets = ctx.targets.to(x.device)
        scores = torch.empty(n * c, targets.shape[1], dtype=torch.float32, device=x.device)
        with torch.no_grad():
            for start in range(0, n * c, self.batch_size):
                index = torch.arange(start, min(start + self.batch_size, n * c), device=x.device)
                image, channel = index // c, index % c
                up = F.interpolate(a[image, channel][:, None], size=size, mode="bilinear", align_corners=False)
                lo, hi = up.amin(dim=(2, 3), keepdim=True), up.amax(dim=(2, 3), keepdim=True)
                spread = hi - lo
                mask = torch.where(spread > 0, (up - lo) / torch.where(spread > 0, spread, 1), 0)
                logits = first_output(ctx.model(x[image] * mask.to(x.dtype)))
                scores[start:start + len(index)] = logits.gather(1, targets[image]).float()
        weights = torch.softmax(scores.view(n, c, -1), dim=1).to(a.dtype)  # (N, C, K), softmax over channels
        return torch.relu(torch.einsum("nck,nchw->nkhw", weights, a))

