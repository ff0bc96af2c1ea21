"""Training: a plain supervised loop whose checkpoints every explainer reads."""

from xviz.train.loop import evaluate, fit

__all__ = ["fit", "evaluate"]
