"""Training regularisers contributed by plugins: the loss becomes ``CE + lambda * R``.

Plugins register :class:`RegularizerSpec` through ``xviz_register_regularizers``; ``xviz train
--reg NAME --reg-lambda L --reg-options k=v`` picks one. The training loop builds it once, after
the model and its transferred weights exist, from:

* ``model``: the network being trained (on its device);
* ``source``: a frozen copy of that network *as it starts* (after ``--weights``), in eval mode,
  for penalties that compare with the starting point (L2-SP, feature distillation);
* ``head``: the name of the model's classifier (penalties usually leave it free);
* ``example``: a (2, 3, H, W) batch of zeros at the training input size.

Each training step calls ``penalty(inputs)`` right after ``model(inputs)``: features the
regulariser needs from that forward pass it records with hooks it installed in ``build``.
A regulariser's own parameters (``parameters()`` with ``requires_grad``) are trained with the
model; its ``state_dict()`` is kept in checkpoints for an exact ``--resume``.
"""

from __future__ import annotations

import torch
from torch import nn

from xviz.specs import RegularizerSpec  # noqa: F401  (declared there, light)


class Regularizer(nn.Module):
    """Base class: ``penalty(inputs) -> R`` (a scalar tensor); ``close()`` removes its hooks.

    ``self.model`` and ``self.source`` are kept outside the module tree: they are neither in
    ``parameters()`` (the optimiser sees only the regulariser's own) nor in ``state_dict()``.
    """

    def __init__(self, model: nn.Module, source: nn.Module):
        super().__init__()
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "source", source)

    def penalty(self, inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def close(self) -> None:
        """Remove hooks from the model (called when training ends)."""
