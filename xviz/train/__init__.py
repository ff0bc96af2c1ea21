"""Training: a configurable loop whose checkpoints every explainer reads."""

from xviz.train.config import TrainConfig, make_config
from xviz.train.loop import TrainResult, run_test_epoch, train

__all__ = ["TrainConfig", "TrainResult", "make_config", "train", "run_test_epoch"]
