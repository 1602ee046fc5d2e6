"""Fine-tuning jobs: the typed job config, the training loop, evaluation and checkpoints."""

from .config import DataConfig, JobConfig, TrainingConfig
from .evaluate import Metrics, classification_scores, evaluate
from .loop import TrainResult, train

__all__ = [
    "DataConfig",
    "JobConfig",
    "Metrics",
    "TrainResult",
    "TrainingConfig",
    "classification_scores",
    "evaluate",
    "train",
]
