"""What plugins declare: light records of methods, models, datasets and regularisers.

A declaration names a thing and says what it is without importing what it needs to run, so
``xviz --help``, ``xviz methods`` or ``xviz models`` answer without importing torch. The heavy part
is reached through :func:`lazy`: ``lazy("package.module:attribute", *args)`` is a callable that
imports the module on its first call, then calls ``attribute(*args, *call_args)``.

This module imports nothing heavy; keep it that way.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence


class Lazy:
    """A callable standing for ``module:attribute`` (optionally with leading arguments), imported on
    first use. ``Lazy("m:f", 1)(2)`` is ``m.f(1, 2)``; :meth:`resolve` gives ``m.f`` itself."""

    def __init__(self, ref: str, *args, **kwargs):
        module, sep, attribute = ref.partition(":")
        if not sep or not module or not attribute:
            raise ValueError(f"lazy reference `{ref}` must look like `package.module:attribute`")
        self.ref, self.args, self.kwargs = ref, args, kwargs

    def resolve(self):
        module, _, attribute = self.ref.partition(":")
        target = importlib.import_module(module)
        for part in attribute.split("."):
            target = getattr(target, part)
        return target

    def __call__(self, *args, **kwargs):
        return self.resolve()(*self.args, *args, **{**self.kwargs, **kwargs})

    def __repr__(self) -> str:
        extra = ", ".join([*map(repr, self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        return f"lazy({self.ref!r}{', ' + extra if extra else ''})"


def lazy(ref: str, *args, **kwargs) -> Lazy:
    """A callable for ``"package.module:attribute"`` that imports it when first called (see :class:`Lazy`)."""
    return Lazy(ref, *args, **kwargs)


def attributes_of(home: str | dict[str, str]):
    """A module-level ``__getattr__`` importing names on first use: every public name of module ``home``,
    or, given ``{name: module}``, just those names. A light package keeps ``package.Name`` working
    without importing ``Name``'s heavy module up front."""

    def __getattr__(name: str):
        module = home.get(name) if isinstance(home, dict) else (None if name.startswith("_") else home)
        if module is None:
            raise AttributeError(f"no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return __getattr__


def _value(item):
    """A declared value: itself, or what a :class:`Lazy` returns when called with no arguments."""
    return item() if isinstance(item, Lazy) else item


@dataclass(frozen=True)
class MethodSpec:
    """A declared explanation method: its ``name``, a one-line ``summary`` for ``xviz methods``, and
    ``load``: a ``"package.module:attribute"`` string (or a :class:`Lazy`, or any callable) giving
    the :class:`xviz.methods.Method`: a Method instance, a Method subclass (instantiated without
    arguments) or a function returning a Method. The registry loads it when the method is used."""

    name: str
    load: str | Callable[[], Any]
    summary: str = ""

    def method(self):
        """The Method this declares: imported and built now."""
        from xviz.errors import XvizError

        target = Lazy(self.load) if isinstance(self.load, str) else self.load
        target = target.resolve() if isinstance(target, Lazy) else target
        made = target if hasattr(target, "compute") and not isinstance(target, type) else target()
        if getattr(made, "name", None) != self.name:
            raise XvizError(f"method `{self.name}` is declared with `{self.load}`, which gives a method named "
                            f"`{getattr(made, 'name', made)}`: the plugin must use one name for both")
        if not made.summary:
            made.summary = self.summary
        return made


class ModelSpec:
    """A registered model.

    * ``build(num_classes, **options) -> nn.Module``: the architecture, randomly initialised;
      ``options`` are architecture choices (e.g. ``head="concat"``) and are stored in checkpoints
      as ``arch_options``. A builder raises :class:`xviz.errors.XvizError` for an option it does not know.
    * ``pretrained(weights) -> LoadedModel``: the model with named pretrained weights (``"DEFAULT"``
      or an enum name like ``"IMAGENET1K_V1"``); ``None`` when there are none.
    * ``preprocessing``, ``class_names``: used with ``--weights none`` or a bare state dict. Either may
      be given as ``lazy(...)``: it is called (once) when first read, so listing models stays light.
    * ``num_classes``: how many classes ``xviz models`` shows; default ``len(class_names)`` (give it
      with lazy class names, so listing does not resolve them).

    ``build`` and ``pretrained`` are called only when a model is used: ``lazy("pkg.module:fn")`` keeps
    the plugin's heavy imports out of its module's top level.
    """

    def __init__(self, name: str, build: Callable[..., Any], preprocessing, class_names, summary: str = "",
                 pretrained: Callable[[str], Any] | None = None, family: str = "", num_classes: int | None = None):
        self.name, self.build, self.summary = name, build, summary
        self.pretrained, self.family = pretrained, family
        self._preprocessing, self._class_names, self._num_classes = preprocessing, class_names, num_classes

    @property
    def preprocessing(self):
        self._preprocessing = _value(self._preprocessing)
        return self._preprocessing

    @property
    def class_names(self) -> Sequence[str]:
        self._class_names = _value(self._class_names)
        return self._class_names

    @property
    def num_classes(self) -> int:
        return self._num_classes if self._num_classes is not None else len(self.class_names)

    def __repr__(self) -> str:
        return f"ModelSpec({self.name!r}, family={self.family!r})"


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset.

    * ``build(split, root=None, transform=None, **options) -> Dataset`` yielding
      ``(transform(pil_image), label)``; ``split`` is ``"train"`` or ``"test"``; ``root`` the local
      folder holding the data (``None``: the dataset's default place, downloading when it can);
      ``transform`` defaults to ``preprocessing.tensor``. A dataset that is missing raises
      :class:`xviz.errors.XvizError` saying where to put it.
    * ``class_names``: index = label (may be empty when only known once the data is read; the
      built dataset's ``classes`` attribute is then authoritative).
    * ``preprocessing``: the evaluation transform (resize, crop, normalisation) a model trained on
      it expects, or ``None`` for "the model's" (a folder of the user's images); ``augment``: the
      default training augmentations (names understood by :func:`xviz.train.augment.train_transform`,
      e.g. ``("crop", "flip")``).

    What the training loop uses when a built dataset has it: ``collate_fn`` (for its DataLoaders, e.g.
    to drop items that failed to decode, returned as ``None``); ``describe()`` (a line printed at the
    start); ``skipped`` (``(path, reason)`` pairs left out, listed in the run folder's
    ``skipped_images.txt``, whose path is then set as ``skip_log`` for later failures); ``split_record``
    (a JSON-able description of the split, kept as the run folder's ``split.json`` and given back to
    ``build`` as the ``split_record`` option, so a resumed or evaluated run sees the same images).
    """

    name: str
    build: Callable[..., object]
    class_names: Sequence[str]
    preprocessing: Any
    summary: str = ""
    augment: tuple[str, ...] = ("flip",)


@dataclass(frozen=True)
class RegularizerSpec:
    """A registered regulariser: ``build(model=, source=, head=, example=, **options) -> Regularizer``
    (:class:`xviz.regularizers.Regularizer`)."""

    name: str
    build: Callable[..., Any]
    summary: str = ""
