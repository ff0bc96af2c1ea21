"""Class activation maps from gradients: GradCAM and GradCAM++.

Both read the target layer's activation ``A`` (N, C, h, w) and the gradients ``G = dS/dA`` of each
target's raw score ``S`` from the shared pass, so asking for both, or for the top-k targets,
costs one forward and one ``autograd.grad``.
"""

import torch

from xviz import hookimpl
from xviz.methods import Context, Method


class GradCAM(Method):
    """GradCAM (Selvaraju et al., ICCV 2017).

    ``w_k = mean_ij G_kij``;  ``M = ReLU(sum_k w_k A_k)``.
    """

    name = "gradcam"
    summary = "Grad-CAM: channels weighted by their mean gradient (Selvaraju et al. 2017)"
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
    summary = "Grad-CAM++: pixel-weighted positive gradients (Chattopadhay et al. 2018)"
    reference = "https://arxiv.org/abs/1710.11063"

    def weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        s = activations.sum(dim=(-2, -1))[:, None, :, None, None]  # (N, 1, C, 1, 1)
        denominator = 2.0 + s * gradients
        ok = (gradients != 0) & (denominator != 0)
        alpha = torch.where(ok, 1.0 / torch.where(ok, denominator, torch.ones_like(denominator)),
                            torch.zeros_like(gradients))
        return (alpha * torch.relu(gradients)).sum(dim=(-2, -1))


@hookimpl
def xviz_register_methods():
    return [GradCAM(), GradCAMPlusPlus()]
