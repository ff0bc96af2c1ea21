"""Learn to Pay Attention (Jetley et al., ICLR 2018): VGG with trainable attention (SaoYan/LearnToPayAttention).

Local features ``l_1..l_3`` from three depths are scored against the global feature ``g``:

* ``pc`` (parametrised compatibility): ``c_ij = <u, l_ij + g>`` (a 1x1 convolution ``u`` without bias);
* ``dp`` (dot product): ``c_ij = <l_ij, g>``.

``softmax`` normalisation: ``a = softmax over all ij of c``, ``g_s = sum_ij a_ij l_ij``; ``sigmoid``:
``a = sigmoid(c)``, ``g_s = mean_ij a_ij l_ij``. The classifier reads ``cat(g_s1, g_s2, g_s3)``;
without attention it reads ``g``. Layers are those of the reference, for any input size that is a
multiple of 32: only ``dense`` (the global-feature convolution, kernel input_size / 32) depends on it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from xviz.errors import XvizError

ATTENTION = ("before", "after", "none")
COMPATIBILITY = ("pc", "dp")
NORMALIZE = ("softmax", "sigmoid")


class ConvBlock(nn.Sequential):
    """``n`` x [Conv3x3 (pad 1, bias) -> BN -> ReLU], with MaxPool2d(2) after each when ``pool``."""

    def __init__(self, cin: int, cout: int, n: int, pool: bool = False):
        layers = []
        for i in range(n):
            layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=True), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True)]
            if pool:
                layers.append(nn.MaxPool2d(2))
        super().__init__(*layers)


class AttentionBlock(nn.Module):
    """Scores local features ``l`` (N, C, h, w) against the global ``g`` (N, C, 1, 1).

    ``forward`` returns ``(c, g_s)``: the raw compatibility (N, 1, h, w) and the attended feature
    (N, C). ``normalized(c)`` is the attention map as the network uses it (softmax or sigmoid).
    """

    def __init__(self, channels: int, compatibility: str = "pc", normalize: str = "softmax"):
        super().__init__()
        self.compatibility, self.normalize = compatibility, normalize
        self.u = nn.Conv2d(channels, 1, 1, bias=False) if compatibility == "pc" else None

    def normalized(self, c: torch.Tensor) -> torch.Tensor:
        if self.normalize == "softmax":
            n, _, h, w = c.shape
            return F.softmax(c.reshape(n, 1, -1), dim=2).reshape(n, 1, h, w)
        return torch.sigmoid(c)

    def forward(self, l: torch.Tensor, g: torch.Tensor):
        c = self.u(l + g) if self.u is not None else (l * g).sum(dim=1, keepdim=True)
        a = self.normalized(c)
        weighted = a * l
        g_s = weighted.sum(dim=(2, 3)) if self.normalize == "softmax" else weighted.mean(dim=(2, 3))
        return c, g_s


class AttnVGG(nn.Module):
    """VGG-att3-concat: ``cb1..cb6``, ``dense``, three ``AttentionBlock``s (``attn1..attn3``), ``classify``.

    ``attention_layers`` names the attention blocks (the protocol the ``attention`` method reads):
    each block's forward returns ``(c, g_s)`` and ``block.normalized(c)`` is its attention map.
    """

    def __init__(self, num_classes: int = 100, attention: str = "before", compatibility: str = "pc",
                 normalize: str = "softmax", input_size: int = 32, width: float = 1.0):
        super().__init__()
        for value, allowed, what in ((attention, ATTENTION, "attention"), (compatibility, COMPATIBILITY, "compatibility"),
                                     (normalize, NORMALIZE, "normalize")):
            if value not in allowed:
                raise XvizError(f"unknown {what} `{value}` for attn_vgg: choose {', '.join(allowed)}")
        if input_size % 32 or input_size < 32:
            raise XvizError(f"attn_vgg needs an input size that is a multiple of 32, not {input_size}")
        c64, c128, c256, c512 = (max(1, round(c * width)) for c in (64, 128, 256, 512))
        self.attention, self.input_size = attention, input_size
        self.cb1, self.cb2 = ConvBlock(3, c64, 2), ConvBlock(c64, c128, 2)
        self.cb3, self.cb4, self.cb5 = ConvBlock(c128, c256, 3), ConvBlock(c256, c512, 3), ConvBlock(c512, c512, 3)
        self.cb6 = ConvBlock(c512, c512, 2, pool=True)
        self.dense = nn.Conv2d(c512, c512, input_size // 32, bias=True)
        if attention == "none":
            self.attention_layers: list[str] = []
            self.classify = nn.Linear(c512, num_classes)
        else:
            self.projector = nn.Conv2d(c256, c512, 1, bias=False)
            self.attn1 = AttentionBlock(c512, compatibility, normalize)
            self.attn2 = AttentionBlock(c512, compatibility, normalize)
            self.attn3 = AttentionBlock(c512, compatibility, normalize)
            self.attention_layers = ["attn1", "attn2", "attn3"]
            self.classify = nn.Linear(3 * c512, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference's initialisation: convs and linears xavier-uniform (gain sqrt 2), biases 0,
        BatchNorm weights U(0, 1), biases 0."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight, gain=math.sqrt(2.0))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.uniform_(m.weight, 0.0, 1.0)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        h, w = x.shape[-2:]
        if (h, w) != (self.input_size, self.input_size):
            raise XvizError(f"this attn_vgg was built for {self.input_size}x{self.input_size} inputs, not {h}x{w}: "
                            f"build it with input_size={h} (its convolutions transfer between sizes)")
        x = self.cb2(self.cb1(x))
        if self.attention == "after":
            l1 = F.max_pool2d(self.cb3(x), 2)
            l2 = F.max_pool2d(self.cb4(l1), 2)
            l3 = F.max_pool2d(self.cb5(l2), 2)
            x = self.cb6(l3)
        else:
            l1 = self.cb3(x)
            l2 = self.cb4(F.max_pool2d(l1, 2))
            l3 = self.cb5(F.max_pool2d(l2, 2))
            x = self.cb6(F.max_pool2d(l3, 2))
        g = self.dense(x)  # (N, C, 1, 1)
        if self.attention == "none":
            return self.classify(g.flatten(1))
        _, g1 = self.attn1(self.projector(l1), g)
        _, g2 = self.attn2(l2, g)
        _, g3 = self.attn3(l3, g)
        return self.classify(torch.cat([g1, g2, g3], dim=1))
