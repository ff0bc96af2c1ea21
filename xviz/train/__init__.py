"""Training: a configurable loop whose checkpoints every explainer reads."""

from xviz.train.config import TrainConfig, make_config
from xviz.train.loop import TrainResult, evaluate, train

__all__ = ["TrainConfig", "TrainResult", "make_config", "train", "evaluate"]
