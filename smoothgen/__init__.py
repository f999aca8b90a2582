"""smoothgen: sound randomized-smoothing certificates at production speed.

Public API:
    SmoothedClassifier  — Cohen et al.'s PREDICT and CERTIFY (docs/theory.md §1).
    CenterSmoother      — center smoothing of metric-space outputs (docs/theory.md §2).
    DiffusionPurifier, DDS, DiffSmooth — diffusion-purified base classifiers (docs/theory.md §3).
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
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# The exports are imported on first use (PEP 562): `import smoothgen` — and with it every start of the
# `smoothgen` command, which a Ctrl-C must stop with one line (smoothgen/_entry.py) — imports neither torch
# nor SciPy. `from smoothgen import SmoothedClassifier` and `smoothgen.stats` work as before.
_EXPORTS = {
    "AdaptiveResult": "smoothgen.adaptive",
    "DistanceToSet": "smoothgen.adaptive",
    "GradientSigma": "smoothgen.adaptive",
    "SemiElasticCertificate": "smoothgen.adaptive",
    "SemiElasticClassifier": "smoothgen.adaptive",
    "SemiElasticSigma": "smoothgen.adaptive",
    "semi_elastic_radius": "smoothgen.adaptive",
    "ABSTAIN": "smoothgen.certificates",
    "CenterCertificate": "smoothgen.certificates",
    "CenterSmoothingResult": "smoothgen.certificates",
    "ClassificationCertificate": "smoothgen.certificates",
    "Prediction": "smoothgen.certificates",
    "CenterSmoother": "smoothgen.center",
    "SmoothedClassifier": "smoothgen.classify",
    "MeanCertificate": "smoothgen.conditional",
    "MeanSmoother": "smoothgen.conditional",
    "SmoothedConditionalDiffusion": "smoothgen.conditional",
    "ConditionalGenerator": "smoothgen.conditional",
    "DiffusersGenerator": "smoothgen.conditional",
    "DDS": "smoothgen.denoise",
    "DiffSmooth": "smoothgen.denoise",
    "DiffusionPurifier": "smoothgen.denoise",
    "InvalidInputError": "smoothgen.errors",
    "InvalidParameterError": "smoothgen.errors",
    "MetricError": "smoothgen.errors",
    "ModelLoadError": "smoothgen.errors",
    "ModelOutputError": "smoothgen.errors",
    "ResultsFileError": "smoothgen.errors",
    "SmoothgenError": "smoothgen.errors",
    "DistributionBound": "smoothgen.generative",
    "EmbeddingGaussian": "smoothgen.generative",
    "GenerationCertificate": "smoothgen.generative",
    "SmoothedLM": "smoothgen.generative",
    "TokenAblation": "smoothgen.generative",
    "TokenDeletion": "smoothgen.deletion",
    "SmoothedEncoder": "smoothgen.encoders",
}


def __getattr__(name: str):
    """An export, imported on first use; or a submodule (`smoothgen.stats`), as the eager imports provided."""
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    if not name.startswith("__"):
        try:
            return importlib.import_module(f"smoothgen.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"smoothgen.{name}":
                raise
    raise AttributeError(f"module 'smoothgen' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and IDEs see
    from smoothgen.adaptive import AdaptiveResult, DistanceToSet, GradientSigma, SemiElasticCertificate, SemiElasticClassifier, SemiElasticSigma, semi_elastic_radius
    from smoothgen.certificates import ABSTAIN, CenterCertificate, CenterSmoothingResult, ClassificationCertificate, Prediction
    from smoothgen.center import CenterSmoother
    from smoothgen.classify import SmoothedClassifier
    from smoothgen.conditional import ConditionalGenerator, DiffusersGenerator, MeanCertificate, MeanSmoother, SmoothedConditionalDiffusion
    from smoothgen.denoise import DDS, DiffSmooth, DiffusionPurifier
    from smoothgen.errors import InvalidInputError, InvalidParameterError, MetricError, ModelLoadError, ModelOutputError, ResultsFileError, SmoothgenError
    from smoothgen.generative import DistributionBound, EmbeddingGaussian, GenerationCertificate, SmoothedLM, TokenAblation
    from smoothgen.encoders import SmoothedEncoder

__all__ = [
    "ABSTAIN",
    "AdaptiveResult",
    "CenterCertificate",
    "CenterSmoother",
    "CenterSmoothingResult",
    "ClassificationCertificate",
    "ConditionalGenerator",
    "DDS",
    "DiffSmooth",
    "DiffusersGenerator",
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
