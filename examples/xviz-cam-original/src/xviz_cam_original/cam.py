"""The original Class Activation Mapping (CAM): the method, imported when it is used.

Zhou, Khosla, Lapedriza, Oliva and Torralba, *Learning Deep Features for Discriminative
Localization*, CVPR 2016. For a network that ends in global average pooling (GAP) and one linear
classifier ``W``, the score of class ``t`` is ``S_t = sum_k W[t, k] mean_ij A_kij + b_t``, and the
class activation map spreads that sum back over the positions::

    M_t = sum_k W[t, k] A_k

with ``A`` the activation that is pooled. As in the paper (and torchcam's ``CAM``) there is no ReLU
and no bias. On such a network ``ReLU(M_t) = h * w * GradCAM_t``, since ``dS_t / dA_kij`` is
``W[t, k] / (h * w)`` everywhere.
"""

import torch
from torch import nn

from xviz.errors import XvizError
from xviz.methods import Context, Method


class CAM(Method):
    """CAM (Zhou et al., CVPR 2016): ``M_t = sum_k W[t, k] A_k``, where ``A`` (C x h x w) is the layer
    that global average pooling reads and ``W`` the linear classifier after it; no ReLU, no bias."""

    name = "cam"
    reference = "https://arxiv.org/abs/1512.04150"

    def check(self, model: nn.Module, pm=None) -> None:
        # Called before any work: a model without a linear layer cannot have a GAP + linear head.
        if not any(isinstance(module, nn.Linear) for module in model.modules()):
            raise XvizError(f"`cam` needs a model ending in global average pooling and one nn.Linear classifier, "
                            f"and `{type(model).__name__}` has no nn.Linear: use `gradcam` instead")

    def compute(self, ctx: Context) -> torch.Tensor:
        activations = ctx.activations.detach()                 # (N, C, h, w): no gradients needed
        weight = classifier_weight(ctx.model, activations, ctx.logits.detach(), ctx.layer)  # (classes, C)
        return torch.einsum("nkc,nchw->nkhw", weight[ctx.targets], activations)   # (N, K, h, w)


def classifier_weight(model: nn.Module, activations: torch.Tensor, logits: torch.Tensor, layer: str) -> torch.Tensor:
    """The weight of the ``nn.Linear`` that turns the global average of ``activations`` into ``logits``.

    The last linear layer of matching shape whose output on the pooled activations *is* the logits:
    so a wrong ``--layer``, or a head with more than one linear layer, is an error rather than a
    plausible-looking but wrong map.
    """
    pooled = activations.mean(dim=(2, 3))                       # global average pooling: (N, C)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for linear in reversed(linears):
            if (linear.in_features, linear.out_features) != (pooled.shape[1], logits.shape[1]):
                continue
            # a rounding tolerance, relative to the size of the terms that are summed
            scale = (pooled.abs() @ linear.weight.abs().T + logits.abs()).amax()
            rtol = max(1e-3, 20 * torch.finfo(pooled.dtype).eps)
            if (linear(pooled) - logits).abs().amax() <= rtol * scale:
                return linear.weight.detach()
    raise XvizError(f"`cam` needs layer `{layer}` to feed global average pooling and one nn.Linear classifier "
                    "directly, and the model's scores are not computed that way: explain the layer just before "
                    "the pooling with --layer (`xviz layers` lists them), or use `gradcam` instead")

