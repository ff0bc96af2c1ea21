import contextlib
import io

import pytest
import torch
from torch import nn

from xviz.registry import get_plugin_manager


@pytest.fixture
def pm():
    """A fresh plugin manager with the built-ins only (no third-party entry points)."""
    return get_plugin_manager(entrypoints=False)


class TinyCNN(nn.Module):
    """conv -> BN -> ReLU(inplace) -> conv -> ReLU(inplace) -> GAP -> linear; `body.3` is the last conv."""

    def __init__(self, classes=5, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                                  nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(12, classes))
        with torch.no_grad():  # make scores large enough that peers' epsilons are negligible
            self.head[3].weight.mul_(50)

    def forward(self, x):
        return self.head(self.body(x))


@pytest.fixture
def tiny():
    return TinyCNN().eval()


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 16, 16, generator=g)


@pytest.fixture(scope="session")
def demo():
    from xviz.models import load_model

    return load_model("xviz-demo", pm=get_plugin_manager(entrypoints=False))


@pytest.fixture
def run_cli(capsys):
    """Run `xviz ARGS` in-process; returns (exit code, stdout, stderr)."""

    def run(*args):
        from xviz.cli import main

        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run
