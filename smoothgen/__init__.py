"""smoothgen: sound randomized-smoothing certificates at production speed.

Public API:
    SmoothedClassifier  — Cohen et al.'s PREDICT and CERTIFY (THEORY.md §1).
    CenterSmoother      — center smoothing of metric-space outputs (THEORY.md §2).
    DiffusionPurifier, DDS, DiffSmooth — diffusion-purified base classifiers (THEORY.md §3).
    SmoothedLM          — SmoothGen for causal LMs: token ablation (certificates in edited tokens, §4g) or
                          noise on the prompt's token embeddings; certified prefix of smoothed greedy
                          decoding, TV/W1 bound, Levenshtein center smoothing (§4). TokenAblation,
                          EmbeddingGaussian — its noise spaces.
    SmoothedEncoder     — center smoothing of a sentence encoder's pooled embedding in either noise space.
    SmoothedConditionalDiffusion — the class-conditional DDPM smoothed in its class-embedding space (§4a/d/e).
    SemiElasticClassifier — input-dependent σ with the Súkeník et al. certificate (§5); GradientSigma is
                          the uncertified heuristic.
    stats, metrics      — the statistics and the metric registry behind them.
    models              — embedded digits models trained by the project's own scripts.
"""
from smoothgen.adaptive import (
    AdaptiveResult,
    DistanceToSet,
    GradientSigma,
    SemiElasticCertificate,
    SemiElasticClassifier,
    SemiElasticSigma,
    semi_elastic_radius,
)
from smoothgen.certificates import (
    ABSTAIN,
    CenterCertificate,
    CenterSmoothingResult,
    ClassificationCertificate,
    Prediction,
)
from smoothgen.center import CenterSmoother
from smoothgen.classify import SmoothedClassifier
from smoothgen.conditional import MeanCertificate, MeanSmoother, SmoothedConditionalDiffusion
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
from smoothgen.generative import DistributionBound, EmbeddingGaussian, GenerationCertificate, SmoothedLM, TokenAblation
from smoothgen.encoders import SmoothedEncoder

__version__ = "0.1.0"

__all__ = [
    "ABSTAIN",
    "AdaptiveResult",
    "CenterCertificate",
    "CenterSmoother",
    "CenterSmoothingResult",
    "ClassificationCertificate",
    "DDS",
    "DiffSmooth",
    "DiffusionPurifier",
    "DistanceToSet",
    "DistributionBound",
    "EmbeddingGaussian",
    "GenerationCertificate",
    "GradientSigma",
    "InvalidInputError",
    "InvalidParameterError",
    "MeanCertificate",
    "MeanSmoother",
    "MetricError",
    "ModelLoadError",
    "ModelOutputError",
    "Prediction",
    "ResultsFileError",
    "SemiElasticCertificate",
    "SemiElasticClassifier",
    "SemiElasticSigma",
    "SmoothedClassifier",
    "SmoothedConditionalDiffusion",
    "SmoothedEncoder",
    "SmoothedLM",
    "SmoothgenError",
    "TokenAblation",
    "semi_elastic_radius",
    "__version__",
]
