"""xviz checkpoints: weights plus what is needed to use them, written atomically, read safely.

A checkpoint is a ``torch.save``'d dict of plain types (loadable with ``weights_only=True``):

``format``       ``"xviz-checkpoint/1"``
``arch``         registered model name whose ``build(num_classes, **arch_options)`` recreates the network
``arch_options`` architecture choices passed to that builder (e.g. ``{"head": "concat"}``)
``state_dict``   the weights
``class_names``  list of class names, index = class id
``preprocessing`` :class:`xviz.images.Preprocessing` as a dict
``history``      list of per-epoch dicts (loss, accuracy, ...)
``config``       the training configuration
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from xviz.errors import XvizError
from xviz.images import Preprocessing
from xviz.render import atomic_write

FORMAT = "xviz-checkpoint/1"


def save_checkpoint(path, *, arch: str, state_dict: dict, class_names, preprocessing: Preprocessing,
                    history=None, config=None, arch_options=None, **extra) -> Path:
    """Write an xviz checkpoint atomically (a crash leaves the previous file intact)."""
    payload = {
        "format": FORMAT,
        "arch": arch,
        "arch_options": dict(arch_options or {}),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "class_names": list(class_names),
        "preprocessing": preprocessing.to_dict(),
        "history": list(history or []),
        "config": dict(config or {}),
        **extra,
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def read_checkpoint(path) -> dict:
    """Load a checkpoint file with ``weights_only=True``; a bare state dict is returned as
    ``{"state_dict": ...}``. Errors say what is wrong with the file."""
    path = Path(path)
    if path.is_dir():  # a training run folder: its best model
        inside = next((path / name for name in ("best.pt", "last.pt") if (path / name).is_file()), None)
        if inside is None:
            raise XvizError(f"`{path}` is a folder without best.pt or last.pt: pass a checkpoint file")
        path = inside
    if not path.is_file():
        raise XvizError(f"checkpoint `{path}` does not exist: check the path")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise XvizError(f"checkpoint `{path}` cannot be read (permission denied): check its permissions") from None
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError, OSError) as exc:
        if "Unsupported global" in str(exc) or "allowed global" in str(exc):
            raise XvizError(f"`{path}` holds Python objects besides weights, so it is not loaded (weights_only): "
                            "re-save it with torch.save(model.state_dict(), ...)") from None
        raise XvizError(f"`{path}` is not a PyTorch checkpoint, or it is damaged") from None
    if isinstance(data, dict) and data.get("format") == FORMAT:
        return data
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        return data
    if isinstance(data, dict) and isinstance(data.get("model"), dict):  # {"model": state_dict, "epoch": ...}
        return {"state_dict": data["model"], **{k: v for k, v in data.items() if k != "model"}}
    if isinstance(data, dict) and data and all(torch.is_tensor(v) for v in data.values()):
        return {"state_dict": data}
    raise XvizError(f"`{path}` holds no model weights (expected an xviz checkpoint or a state dict)")
