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

import io
import re
import sys
import warnings
from collections import OrderedDict
from pathlib import Path

import torch

from xviz.errors import XvizError
from xviz.images import Preprocessing
from xviz.render import atomic_write

FORMAT = "xviz-checkpoint/1"
FORBIDDEN = ("unsupported global", "allowed global", "allowlisted", "reduce for unrecognized function")


def checkpoint_payload(*, arch: str, state_dict: dict, class_names, preprocessing: Preprocessing | dict,
                       history=None, config=None, arch_options=None, **extra) -> dict:
    """The dict an xviz checkpoint holds (plain types and tensors, in a fixed key order)."""
    return {
        "format": FORMAT,
        "arch": arch,
        "arch_options": dict(arch_options or {}),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "class_names": list(class_names),
        "preprocessing": preprocessing if isinstance(preprocessing, dict) else preprocessing.to_dict(),
        "history": list(history or []),
        "config": dict(config or {}),
        **extra,
    }


def to_bytes(payload) -> bytes:
    """``torch.save(payload)`` in memory: equal payloads give equal bytes (the archive is named
    ``archive``, not after a temporary file; equal strings are pickled as one object, whether they
    were one in memory or not), and a full disk is an OSError of the write, not of torch."""
    buffer = io.BytesIO()
    torch.save(_interned(payload, {}), buffer)
    return buffer.getvalue()


def _interned(value, seen: dict):
    """``value`` with every string interned (containers copied, shared ones kept shared)."""
    if isinstance(value, str):
        return sys.intern(value)
    kind = type(value)
    if kind not in (dict, OrderedDict, list, tuple):  # tensors, numbers, and subclasses kept as they are
        return value
    if id(value) not in seen:
        items = value.items() if isinstance(value, dict) else None
        seen[id(value)] = kind((_interned(k, seen), _interned(v, seen)) for k, v in items) if items is not None \
            else kind(_interned(v, seen) for v in value)
    return seen[id(value)]


def save_checkpoint(path, **fields) -> Path:
    """Write an xviz checkpoint (the fields of :func:`checkpoint_payload`) atomically: a crash leaves
    the previous file intact."""
    data = to_bytes(checkpoint_payload(**fields))
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def read_checkpoint(path) -> dict:
    """Load a checkpoint file with ``weights_only=True``; a bare state dict is returned as
    ``{"state_dict": ...}``. Its structure is checked (:func:`check_fields`); every error is one line
    naming the file (and the field)."""
    path = Path(path)
    if path.is_dir():  # a training run folder: its best model
        inside = next((path / name for name in ("best.pt", "last.pt") if (path / name).is_file()), None)
        if inside is None:
            raise XvizError(f"`{path}` is a folder without best.pt or last.pt: pass a checkpoint file")
        path = inside
    if not path.is_file():
        raise XvizError(f"checkpoint `{path}` does not exist: check the path")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles; the error below says it all
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise XvizError(f"checkpoint `{path}` cannot be read (permission denied): check its permissions") from None
    except Exception as exc:  # the unpickler fails in many ways on foreign bytes: IndexError, KeyError, EOFError, ...
        raise unreadable(path, exc) from None
    return check_fields(path, data)


def unreadable(path, exc: Exception) -> XvizError:
    """The one-line error for a file ``torch.load(weights_only=True)`` refused with ``exc``."""
    text = str(exc)
    if any(marker in text.lower() for marker in FORBIDDEN):
        found = re.search(r"global\W+(?:global\s+)?([\w.]+)", text.split("error:")[-1], re.IGNORECASE)
        named = f" (`{found.group(1)}`)" if found else ""
        return XvizError(f"`{path}` holds Python objects besides weights{named}, which are not loaded for safety "
                         "(weights_only): re-save it with torch.save(model.state_dict(), ...)")
    return XvizError(f"`{path}` is not a PyTorch checkpoint, or it is damaged: re-save or replace it")


def check_fields(path, data) -> dict:
    """``data`` (a loaded checkpoint) if its fields have the types xviz uses, else a one-line XvizError
    naming ``path`` and the field: the weights, class names, preprocessing, options, history."""
    def bad(field: str, problem: str):
        return XvizError(f"checkpoint `{path}`: field `{field}` {problem}: re-save it or pick another checkpoint")

    if not isinstance(data, dict) or not data:
        raise XvizError(f"`{path}` holds no model weights (expected an xviz checkpoint or a state dict)")
    if data.get("format") != FORMAT and "state_dict" not in data and isinstance(data.get("model"), dict):
        data = {"state_dict": data["model"], **{k: v for k, v in data.items() if k != "model"}}  # {"model": ..., "epoch": ...}
    if data.get("format") != FORMAT and "state_dict" not in data:
        if not all(torch.is_tensor(v) for v in data.values()):
            raise XvizError(f"`{path}` holds no model weights (expected an xviz checkpoint or a state dict)")
        data = {"state_dict": data}
    state = data.get("state_dict")
    if not isinstance(state, dict) or not state:
        raise bad("state_dict", f"is {_kind(state)}, not a table of named tensors")
    for key, value in state.items():
        if not isinstance(key, str) or not torch.is_tensor(value):
            raise bad(f"state_dict.{key}", f"is {_kind(value)}, not a tensor")
        if value.is_floating_point() and bool(torch.isnan(value).any()):  # (-inf is a legitimate mask value)
            raise bad(f"state_dict.{key}", "holds NaN values (a training run that diverged?)")
    for field, kind, wanted in (("arch", str, "a model name"), ("arch_options", dict, "a table"),
                                ("history", list, "a list"), ("config", dict, "a table")):
        if data.get(field) is not None and not isinstance(data[field], kind):
            raise bad(field, f"is {_kind(data[field])}, not {wanted}")
    names = data.get("class_names")
    if names is not None and not isinstance(names, (list, tuple)):
        raise bad("class_names", f"is {_kind(names)}, not a list of names")
    odd = next((n for n in names or () if not isinstance(n, str)), None)
    if odd is not None:
        raise bad("class_names", f"holds {_kind(odd)} (`{odd}`) among the names (one text per class)")
    if data.get("preprocessing") is not None:
        try:
            Preprocessing.from_dict(data["preprocessing"])
        except (ValueError, TypeError, KeyError) as exc:
            raise bad("preprocessing", str(exc).strip("'\"")) from None
    return data


def _kind(value) -> str:
    """A short description of ``value``'s type for messages: ``a list``, ``text``, ``nothing``."""
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return f"text `{value[:40]}`"
    name = {dict: "table", list: "list", tuple: "list", float: "number", int: "whole number", bool: "true/false"}
    article = next((n for t, n in name.items() if type(value) is t), type(value).__name__)
    return ("an " if article[0] in "aeiou" else "a ") + article
