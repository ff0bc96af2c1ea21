"""Training: a configurable loop whose checkpoints every explainer reads.

Names load on first use, so ``xviz.train.config`` (read by ``xviz --help`` for the flags) does not
import torch."""

from xviz.specs import attributes_of

__getattr__ = attributes_of({"TrainConfig": "xviz.train.config", "make_config": "xviz.train.config",
                             "TrainResult": "xviz.train.loop", "train": "xviz.train.loop",
                             "run_test_epoch": "xviz.train.loop"})

__all__ = ["TrainConfig", "TrainResult", "make_config", "train", "run_test_epoch"]
