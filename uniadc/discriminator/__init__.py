"""Multi-task discriminator (paper §3.4): unified anomaly detection and classification."""

from uniadc.discriminator.decision import (
    image_classes,
    image_scores,
    pixel_classes,
)
from uniadc.discriminator.inference import Prediction, predict
from uniadc.discriminator.model import (
    Discriminator,
    DiscriminatorOutput,
    build_discriminator,
    image_features,
    preprocess,
    restore_discriminator,
)
from uniadc.discriminator.training import TrainingData, train_discriminator

__all__ = [
    "Discriminator",
    "DiscriminatorOutput",
    "Prediction",
    "TrainingData",
    "build_discriminator",
    "image_classes",
    "image_features",
    "image_scores",
    "pixel_classes",
    "predict",
    "preprocess",
    "restore_discriminator",
    "train_discriminator",
]
