"""Every figure of the five source documents, with where the gallery stands on it.

A gallery figure page (an entry of :data:`xviz.gallery.FIGURES`) names the document figure it
reproduces in its ``source``; :data:`DOCUMENT_FIGURES` lists every document figure, so the index can
show the ones with no page too, and why. A row whose ``source`` a figure page names is shown as that
page (its status is the page's); a figure page whose ``source`` has no row here still gets its row.
"""

from __future__ import annotations

from dataclasses import dataclass

SYNTHETIC = "reproduced on synthetic data"
NEEDS_DATA = "needs the real dataset"
OFFLINE = "not reproducible offline"

DOCUMENTS = ("Learn to Pay Attention", "CUB-200 fine-tuning", "Fine-tuning guide", "ResNet-18 on CIFAR-10", "AFDS")


@dataclass(frozen=True)
class DocumentFigure:
    """A figure of a source document: ``source`` ("Document: figure"); ``status``: how far the gallery
    can go offline; ``why``: what differs or why not (used when the page's figure says nothing);
    ``slugs``: the gallery pages that may draw it, preferred first (a page whose ``source`` names this
    row counts too)."""

    source: str
    status: str
    why: str = ""
    slugs: tuple[str, ...] = ()

    @property
    def document(self) -> str:
        return self.source.split(":", 1)[0]


_LTPA, _CUB, _GUIDE, _R18, _AFDS = DOCUMENTS
DOCUMENT_FIGURES: list[DocumentFigure] = [
    DocumentFigure(f"{_LTPA}: architecture of the attention VGG (three attention blocks)", SYNTHETIC,
                   "drawn from the model's own modules", slugs=("ltpa-architecture",)),
    DocumentFigure(f"{_LTPA}: CIFAR-100 train loss and test accuracy curves", NEEDS_DATA,
                   "300 epochs on CIFAR-100 (`xviz train --recipe attn-vgg-before-cifar100 --data ROOT`)",
                   slugs=("ltpa-curves",)),
    DocumentFigure(f"{_LTPA}: attention maps of each attention layer", SYNTHETIC,
                   "same layout (image, then one overlay per attention layer); an attention VGG trained on the "
                   "synthetic part dataset instead of CIFAR-100 / CUB birds", slugs=("attention-layers",)),
    DocumentFigure(f"{_CUB}: train accuracy, train loss and test accuracy of the attempts", SYNTHETIC,
                   "the demo CNN on the synthetic part dataset instead of the attention VGG on CUB-200-2011; "
                   "four of the attempts", slugs=("attempts",)),
    DocumentFigure(f"{_CUB}: CUB is hard (mistakes and what each attention layer looked at)", NEEDS_DATA,
                   "the document's mistakes are CUB-200-2011 birds (`--data ROOT`)", slugs=("ltpa-hard-images",)),
    DocumentFigure(f"{_GUIDE}: augmentation preview (one image, per transform and per recipe)", SYNTHETIC,
                   slugs=("augment-preview",)),
    DocumentFigure(f"{_GUIDE}: LR finder (learning rate against iteration, loss against learning rate)", SYNTHETIC,
                   "fastai's range test on the demo model and synthetic images; the loss-against-rate picture",
                   slugs=("lr-finder",)),
    DocumentFigure(f"{_GUIDE}: learning-rate overshoot (loss against step for three rates)", SYNTHETIC,
                   slugs=("lr-overshoot",)),
    DocumentFigure(f"{_R18}: flip against cutout curves of the two runs", NEEDS_DATA,
                   "two 150-epoch CIFAR-10 runs (`--recipe cifar10-resnet18-flip` and `cifar10-resnet18-cutout`, "
                   "`--data ROOT`)", slugs=("flip-cutout",)),
    DocumentFigure(f"{_R18}: misclassified images with their CAMs", SYNTHETIC,
                   "titled Predicted / Actual as in the document; the demo CNN on synthetic images instead of "
                   "ResNet-18 on CIFAR-10, 12 images instead of 25", slugs=("misclassified",)),
    DocumentFigure(f"{_R18}: GradCAM and GradCAM++ of a water bird on VGG-16 (features.29)", OFFLINE,
                   "needs torchvision's ImageNet VGG-16 weights, which cannot be downloaded here; the page shows "
                   "GradCAM++ of the demo CNN on the synthetic bird", slugs=("vgg16-gradcam-gradcampp", "gradcampp-bird")),
    DocumentFigure(f"{_AFDS}: overview of an AFS gate (conv, BN, predictor, winner-take-all, s and m masks)",
                   SYNTHETIC, slugs=("afds-gate",)),
    DocumentFigure(f"{_AFDS}: sample images of the datasets", NEEDS_DATA,
                   "Caltech-256, Stanford Dogs, MIT Indoor 67, CUB-200-2011 and Food-101 are not shipped; only the "
                   "synthetic dataset's mosaic is drawn offline", slugs=("afds-datasets",)),
    DocumentFigure(f"{_AFDS}: results across regularisers (accuracy and MACs)", SYNTHETIC, slugs=("afds-regularisers",)),
    DocumentFigure(f"{_AFDS}: accuracy against MACs as the keep ratio d and the thresholds vary", SYNTHETIC,
                   slugs=("afds-sweep",)),
    DocumentFigure(f"{_AFDS}: channel importance and channels kept per gated layer", SYNTHETIC,
                   "the AFS gates of a ResNet-18 on the synthetic part dataset at 64 px (the paper: ResNet-101 on "
                   "Stanford Dogs at 224 px)", slugs=("afs-channels",)),
]


def row_for(fig) -> DocumentFigure | None:
    """The document figure a gallery figure reproduces: the row its ``source`` or its slug names."""
    return next((r for r in DOCUMENT_FIGURES if (fig.source and r.source == fig.source) or fig.slug in r.slugs), None)


def _preference(row: DocumentFigure, result) -> tuple:
    """Which of several pages drawing one document figure the index links: one with a page, then the
    row's order of slugs."""
    order = row.slugs.index(result.figure.slug) if result.figure.slug in row.slugs else len(row.slugs)
    return (not result.page, order)


def status(row: DocumentFigure | None, has_page: bool) -> str:
    """The index's status of a document figure: what its page shows, or why there is none."""
    if not has_page:
        return "not drawn yet" if row is None or row.status == SYNTHETIC else row.status
    if row is None or row.status == SYNTHETIC:
        return SYNTHETIC
    return f"synthetic proxy drawn; the document's own figure: {row.status}"


def rows(figures) -> list[tuple[str, object, str, str]]:
    """(source, figure result or None, status, what differs or why) for every document figure in
    document order, then the figure pages no row names. ``figures``: the gallery's FigureResults."""
    out, shown = [], set()
    for row in DOCUMENT_FIGURES:
        candidates = sorted((f for f in figures if row_for(f.figure) is row), key=lambda f: _preference(row, f))
        result = candidates[0] if candidates else None
        page = bool(result is not None and result.page)
        why = (result.figure.reproduction if page and result.figure.reproduction else "") or row.why
        if not page and row.status == SYNTHETIC:
            why = "its page is not generated yet" if result else "reproducible offline; no gallery page draws it yet"
        out.append((row.source, result, status(row, page), why))
        shown.add(id(result))
    for f in figures:  # pages no row names, or a second page of one document figure
        if id(f) not in shown:
            out.append((f.figure.source or f.figure.title, f, status(None, bool(f.page)), f.figure.reproduction))
    return out
