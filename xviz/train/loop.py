"""A plain supervised loop: SGD with momentum, cosine learning rate, cross-entropy; a tqdm bar per
epoch, a summary line per epoch, and a history that goes into the checkpoint."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (fraction) of ``model`` over ``loader``."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        count += y.numel()
    return total_loss / max(count, 1), correct / max(count, 1)


def fit(model: nn.Module, train_set, test_set, *, epochs: int = 10, lr: float = 0.05, batch_size: int = 64,
        weight_decay: float = 5e-4, device="cpu", seed: int = 0, workers: int = 0, log=print) -> list[dict]:
    """Train ``model`` and return the history: one dict per epoch with train/test loss and accuracy."""
    torch.manual_seed(seed)
    model.to(device)
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator, num_workers=workers)
    test_loader = DataLoader(test_set, batch_size=256, num_workers=workers)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    steps = epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        start, seen, correct, total_loss = time.time(), 0, 0, 0.0
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{epochs}", leave=False, unit="batch")
        for x, y in bar:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += y.numel()
            total_loss += loss.item() * y.numel()
            correct += (logits.argmax(1) == y).sum().item()
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{100 * correct / seen:.2f}%")
        test_loss, test_acc = evaluate(model, test_loader, device)
        row = {"epoch": epoch, "train_loss": total_loss / seen, "train_acc": correct / seen,
               "test_loss": test_loss, "test_acc": test_acc, "lr": scheduler.get_last_lr()[0],
               "seconds": time.time() - start}
        history.append(row)
        log(f"epoch {epoch}/{epochs} - train loss {row['train_loss']:.4f} - train acc {100 * row['train_acc']:.2f}% - "
            f"test loss {test_loss:.4f} - test acc {100 * test_acc:.2f}% - {row['seconds']:.0f}s")
    return history
