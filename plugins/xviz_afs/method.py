"""The ``afs-channels`` method: where the channels each AFS gate keeps fire."""

from __future__ import annotations

import torch

from xviz.methods import Context, Method

from xviz_afs.gates import recording, require_gates
from xviz_afs.regularizers import stage_last_convs


class AFSChannels(Method):
    """Where the channels an AFS gate keeps fire: for each ResNet stage's last gated layer,
    ``M = sum_c ReLU(out_c)`` with ``out_c = m_c (s_c pi_c + (1 - s_c) gamma_c keep_c) BN(conv x)_c``,
    i.e. the gated output (channels dropped by winner-take-all or the masks contribute nothing).
    The same map for every target: the gates do not depend on the class. Per-channel importances,
    kept fractions and MACs: ``xviz afs-report``."""

    name = "afs-channels"
    uses_layer = False
    reference = "https://openreview.net/forum?id=ryxyCeHtPB"

    def check(self, model, pm=None) -> None:
        require_gates(model, self.name)

    def observe(self, model):
        return recording(model)

    def compute(self, ctx: Context) -> dict[str, torch.Tensor]:
        records, k = ctx.observed[self.name], ctx.targets.shape[1]
        out = {}
        for name in stage_last_convs(ctx.model):
            if name in records:
                fired = torch.relu(records[name]["output"]).sum(dim=1)  # (N, h, w)
                out[name] = fired[:, None].expand(-1, k, -1, -1)
        return out
