"""smoothgen: sound randomized-smoothing certificates at production speed.

Public API:
    SmoothedClassifier  — Cohen et al.'s PREDICT and CERTIFY (THEORY.md §1).
    CenterSmoother      — center smoothing of metric-space outputs (THEORY.md §2).
    DiffusionPurifier, DDS, DiffSmooth — diffusion-purified base classifiers (THEORY.md §3).
    stats, metrics      — the statistics and the metric registry behind them.
    models              — embedded digits models trained by the project's own scripts.
"""
from smoothgen.certificates import (
    ABSTAIN,
    CenterCertificate,
    CenterSmoothingResult,
    ClassificationCertificate,
    Prediction,
)
from smoothgen.center import CenterSmoother
from smoothgen.classify import SmoothedClassifier
from smoothgen.denoise import DDS, DiffSmooth, DiffusionPurifier
from smoothgen.errors import (
    InvalidInputError,
    InvalidParameterError,
    MetricError,
    ModelLoadError,
    ModelOutputError,
    ResultsFileError,
    SmoothgenError,
)

__version__ = "0.1.0"

__all__ = [
    "ABSTAIN",
    "CenterCertificate",
    "CenterSmoother",
    "CenterSmoothingResult",
    "ClassificationCertificate",
    "DDS",
    "DiffSmooth",
    "DiffusionPurifier",
    "InvalidInputError",
    "InvalidParameterError",
    "MetricError",
    "ModelLoadError",
    "ModelOutputError",
    "Prediction",
    "ResultsFileError",
    "SmoothedClassifier",
    "SmoothgenError",
    "__version__",
]
