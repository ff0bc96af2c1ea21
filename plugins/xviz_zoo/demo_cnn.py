"""The demo model's network: a small CNN for 64x64 images of the synthetic part dataset."""

from torch import nn

from xviz.data.synthetic import CLASSES


def _stage(cin: int, cout: int, pool: bool) -> list[nn.Module]:
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
              nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return layers + ([nn.MaxPool2d(2)] if pool else [])


class DemoCNN(nn.Module):
    """64x64 input -> three conv stages (16, 32, 64 channels; 64 -> 32 -> 16 px) -> GAP -> linear.

    ``features`` (64 x 16 x 16) is the layer the CAM methods explain by default.
    """

    def __init__(self, num_classes: int = len(CLASSES)):
        super().__init__()
        self.features = nn.Sequential(*_stage(3, 16, True), *_stage(16, 32, True), *_stage(32, 64, False))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))
