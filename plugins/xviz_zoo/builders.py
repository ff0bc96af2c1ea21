"""What the zoo's declarations call when a model is used: torchvision builders, pretrained weights,
class names and preprocessing (read from torchvision then), the demo model and the CIFAR ResNet-18."""

from __future__ import annotations

import contextlib
import io
import sys
import urllib.error

from xviz.errors import XvizError
from xviz.images import Preprocessing
from xviz.models import LoadedModel, load_checkpoint

from xviz_zoo.heads import set_head


def _weights_enum(name: str, weights: str):
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    try:
        return enum[weights.upper()] if weights.upper() != "DEFAULT" else enum.DEFAULT
    except KeyError:
        raise XvizError(f"model `{name}` has no weights `{weights}`: choose DEFAULT, none, a checkpoint PATH or one of "
                        f"{', '.join(w.name for w in enum)}") from None


def pretrained(name: str, weights: str) -> LoadedModel:
    """torchvision ``name`` with the named ImageNet weights (downloaded once into $TORCH_HOME)."""
    import torchvision

    w = _weights_enum(name, weights)
    chatter = io.StringIO()  # torch.hub prints "Downloading: ..." on stdout: keep stdout for xviz's table
    try:
        with contextlib.redirect_stdout(chatter):
            module = torchvision.models.get_model(name, weights=w, progress=False)
        sys.stderr.write(chatter.getvalue())
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
        raise XvizError(
            f"could not download the pretrained weights {w} for `{name}` ({getattr(exc, 'reason', exc)}); they are "
            "fetched once and cached under $TORCH_HOME. Offline, use --model xviz-demo, --checkpoint PATH or "
            "--weights none"
        ) from None
    return LoadedModel(module, name, list(w.meta["categories"]), Preprocessing.from_transforms(w.transforms()), str(w))


def no_options(name: str, options: dict) -> None:
    if options:
        raise XvizError(f"model `{name}` takes no options, got {', '.join(f'`{k}`' for k in options)}")


def build(name: str, num_classes: int, head: str | None = None, **options):
    """torchvision ``name`` with ``num_classes`` outputs; ``head="linear"|"concat"`` swaps the head."""
    import torchvision

    no_options(name, options)
    if head is None:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    family = next((f for f in ("resnet", "vgg", "densenet") if name.startswith(f)), name)
    return set_head(torchvision.models.get_model(name, weights=None), head, family, num_classes)


def class_names(name: str) -> tuple[str, ...]:
    import torchvision

    return tuple(torchvision.models.get_model_weights(name).DEFAULT.meta["categories"])


def preprocessing(name: str) -> Preprocessing:
    import torchvision

    return Preprocessing.from_transforms(torchvision.models.get_model_weights(name).DEFAULT.transforms())


def build_demo(num_classes: int, **options):
    from xviz_zoo.demo_cnn import DemoCNN

    no_options("xviz-demo", options)
    return DemoCNN(num_classes)


def build_cifar_resnet18(num_classes: int, **options):
    from xviz_zoo.cifar import CifarResNet18

    no_options("cifar_resnet18", options)
    return CifarResNet18(num_classes)


def demo_pretrained(weights: str) -> LoadedModel:
    from xviz_zoo.demo import CHECKPOINT

    if weights.upper() != "DEFAULT":
        raise XvizError(f"model `xviz-demo` has only its bundled weights: use --weights DEFAULT or none, not `{weights}`")
    return load_checkpoint(CHECKPOINT)
