"""The images a model gets wrong (``xviz misclassified`` draws them with their maps)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mistake:
    """Item ``index`` of a dataset, classified as ``predicted`` with ``probability``; labelled ``actual``."""

    index: int
    predicted: str
    actual: str
    probability: float


def find_mistakes(model, dataset, class_names, batch_size: int = 64, limit: int | None = None):
    """Classify ``dataset`` (items ``(view, label)``, views as the model sees them); returns
    ``(mistakes, total)``, mistakes in dataset order."""
    import torch

    from xviz.models import check_finite_outputs

    device = next(model.module.parameters()).device
    mistakes, total = [], len(dataset) if limit is None else min(limit, len(dataset))
    with torch.no_grad():
        for start in range(0, total, batch_size):
            items = [dataset[i] for i in range(start, min(total, start + batch_size))]
            batch = torch.stack([model.preprocessing.normalize(view) for view, _ in items]).to(device)
            probs = torch.softmax(check_finite_outputs(model.module(batch).float(), model), dim=1)
            p, pred = probs.max(dim=1)
            for j, ((_, label), k, pk) in enumerate(zip(items, pred.tolist(), p.tolist())):
                if k != int(label):
                    mistakes.append(Mistake(start + j, model.class_names[k], class_names[int(label)], pk))
    return mistakes, total
