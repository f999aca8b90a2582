"""Smoothing a conditional diffusion model in its conditioning-embedding space (THEORY.md §4a, §4d, §4e).

The class-conditional digits DDPM (`smoothgen.models.load_ddpm`) is conditioned on a vector: the
class embedding e_k = class_embedding(k) ∈ R^D (D = 64). `SmoothedConditionalDiffusion` perturbs that
vector with Gaussian noise and lets every noisy copy run the DDPM sampler with its own, independent
randomness:

    G(e) = DDPM-sample(conditioning = e + ε, sampler randomness ω),   ε ~ N(0, σ²I), ω independent of ε.

The adversary of the certificates moves the conditioning vector: e → e' with ‖e − e'‖₂ ≤ R. Changing
the label k → j is the move e_k → e_j, so a radius R covers exactly the labels j with ‖e_k − e_j‖ ≤ R
(`class_distances`, `covered_labels`).

What is certified, for every ‖e − e'‖₂ ≤ R:
- one generated sample (`samples`): TV(P_e, P_e') ≤ 2Φ(R/(2σ)) − 1 (§4a, `stats.tv_bound`), and
  W1 under ℓ2 ≤ D_img·TV with D_img = 8 the ℓ2 diameter of [0, 1]^64 images. Sample-free; valid
  because σ is fixed and ω is independent of ε.
- the mean image (`certify_mean`, §4e): outputs are clipped to [0, 1]^64, so ‖f − ½·1‖₂ ≤ B = 4 and the
  EXPECTATION F(e) = E f satisfies ‖F(e) − F(e')‖₂ ≤ 2B·(2Φ(R/(2σ)) − 1). The reported image is the
  empirical mean F̂_N of N samples, which differs from F by at most ε_N = (B/√N)(1 + sqrt(2 ln(1/α)))
  with probability ≥ 1 − α (`stats.vector_mean_deviation`). Hence, for two runs with N samples each at
  e and e', ‖F̂_N(e) − F̂_N(e')‖₂ ≤ 2B·TV + 2ε_N with probability ≥ 1 − 2α. Both numbers are reported:
  `expectation_bound` (on F, no probability) and `empirical_bound` (on what a user actually sees).
- the center image (`certify_center`, §2/§4d): center smoothing under "l2" or "tv2d" through
  `smoothgen.center.CenterSmoother`, whose input is the conditioning vector.

Randomness: the embedding noise comes from the engine's keyed streams (`RandomStream(seed, request)`),
the sampler randomness of copy i from a second keyed stream (`DiffusionGenerator`): a pure function
of (seed, request, i). Runs are reproducible and the noise does not depend on the batch size.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from smoothgen import stats
from smoothgen.center import CenterSmoother
from smoothgen.certificates import CenterCertificate
from smoothgen.engine import Purpose, RandomStream, Runtime, Sampler, as_runtime, noise_tv
from smoothgen.engine.noise import NoiseKey, NoiseSource
from smoothgen.engine.reducers import Reducer, describe
from smoothgen.errors import InvalidInputError, InvalidParameterError, ModelOutputError
from smoothgen.models.ddpm import DigitsDDPM, respaced_timesteps, sample
from smoothgen.validate import check_alpha, check_count, check_input, check_positive, check_sigma

__all__ = [
    "DEFAULT_GENERATION_BATCH",
    "DiffusionGenerator",
    "GenerationTVBound",
    "MeanCertificate",
    "MeanSmoother",
    "SmoothedConditionalDiffusion",
]

#: Tag mixed into the seed of the generator's own stream (sampler randomness ω), so that it never
#: coincides with the engine's input-noise streams (keyed (seed, request, purpose), purpose 0..5) nor
#: with DiffSmooth's local-noise stream (smoothgen.denoise.LOCAL_NOISE_STREAM_TAG).
GENERATION_STREAM_TAG = 0xC0DD1F

#: Copies sampled at once. The pre-drawn sampler noise of a batch is batch × steps × 64 float32, which
#: bounds memory: 256 copies × 1000 steps = 65 MB.
DEFAULT_GENERATION_BATCH = 256

#: Number of copies a generator stream can address (the NoiseSource length).
_STREAM_LENGTH = 1 << 62


class DiffusionGenerator(nn.Module):
    """The randomized base generator: a batch of conditioning vectors -> one DDPM sample each.

    Copy number i since the last `reseed` gets sampler noise (its initial x_T and every step's noise)
    that is a pure function of (seed, request_id, i), drawn with the engine's counter-based noise
    (engine/noise.py), so results do not depend on how copies are cut into batches. Copies are numbered
    in call order: it serves one request at a time (the in-process `Sampler`), not the multi-request
    `Scheduler`, which would interleave requests.

    Args:
        ddpm: The class-conditional noise-prediction network (`DigitsDDPM`).
        guidance: Classifier-free guidance weight w ≥ 0 (the unconditional branch uses the null class's
            embedding, which does not depend on the perturbed vector).
        num_steps: Sampling steps (None: all T of the schedule; fewer: evenly respaced).
        seed: Seed of the sampler-noise stream (None: fresh OS entropy, not reproducible).

    Shapes:
        input: [b, embed_dim] conditioning vectors; output: [b, 1, 8, 8] images in [0, 1].
    """

    def __init__(self, ddpm: DigitsDDPM, guidance: float = 0.0, num_steps: int | None = None, seed: int | None = None):
        super().__init__()
        for attribute in ("class_embedding", "embed_dim", "null_class", "num_classes", "num_timesteps", "betas"):
            if not hasattr(ddpm, attribute):
                raise InvalidParameterError(f"ddpm must be a class-conditional DigitsDDPM; it has no {attribute!r}")
        self.ddpm = ddpm
        ok = isinstance(guidance, (int, float)) and not isinstance(guidance, bool) and math.isfinite(guidance)
        if not ok or guidance < 0:
            raise InvalidParameterError(f"guidance must be a finite number >= 0, got {guidance!r}")
        self.guidance = float(guidance)
        try:
            self.timesteps = respaced_timesteps(int(ddpm.num_timesteps), num_steps)
        except ValueError as exc:
            raise InvalidParameterError(str(exc)) from exc
        self.num_steps = int(self.timesteps.numel())
        self.reseed(seed)

    @property
    def embed_dim(self) -> int:
        return int(self.ddpm.embed_dim)

    def reseed(self, seed: int | None, request_id: int = 0) -> None:
        """Restart the sampler-noise stream at copy 0, keyed by (seed, request_id).

        Args:
            seed: Integer ≥ 0 or None (fresh OS entropy).
            request_id: Distinguishes requests that share a seed (integer ≥ 0).
        """
        if seed is not None:
            seed = check_count(seed, "seed", minimum=0)
        request_id = check_count(request_id, "request_id", minimum=0)
        entropy = None if seed is None else [seed, request_id, GENERATION_STREAM_TAG]
        state = int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])
        self._key = NoiseKey(state)
        self._source: NoiseSource | None = None
        self._copies = 0

    def _noise(self, count: int, device: torch.device) -> torch.Tensor:
        """Standard normal sampler noise of the next `count` copies: [count, steps, 1, 8, 8]."""
        shape = (self.num_steps, *self.ddpm.sample_shape)
        if self._source is None or self._source.x.device != device:
            self._source = NoiseSource(torch.zeros(shape, device=device), 1.0, _STREAM_LENGTH, self._key)
        out = torch.empty((count, *shape), device=device)
        self._source.fill(out, self._copies)
        self._copies += count
        return out

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        """Generate one image per conditioning vector. Shapes: [b, embed_dim] -> [b, 1, 8, 8]."""
        if not isinstance(embeds, torch.Tensor) or not torch.is_floating_point(embeds):
            raise InvalidInputError(f"conditioning vectors must be a floating tensor, got {describe(embeds)}")
        if embeds.ndim != 2 or embeds.shape[1] != self.embed_dim:
            raise InvalidInputError(f"conditioning vectors must have shape [b, {self.embed_dim}], got {tuple(embeds.shape)}")
        device = self.ddpm.betas.device
        noise = self._noise(embeds.shape[0], device)
        num_steps = None if self.num_steps == int(self.ddpm.num_timesteps) else self.num_steps
        return sample(self.ddpm, class_embed=embeds.to(device), guidance=self.guidance, num_steps=num_steps, noise=noise)

    def extra_repr(self) -> str:
        return f"guidance={self.guidance}, num_steps={self.num_steps}"


# --------------------------------------------------------------------------------------------------
# Mean smoothing (THEORY.md §4e)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeanCertificate:
    """Mean smoothing of a bounded generator: the mean output and how far it can move (THEORY.md §4e).

    For every input e' with ‖e − e'‖₂ ≤ radius:
    - ‖F(e) − F(e')‖₂ ≤ expectation_bound, for the expectation F = E f (no probability involved);
    - ‖F̂_N(e) − F(e)‖₂ ≤ estimation_radius with probability ≥ 1 − alpha (this run's mean `mean`);
    - ‖F̂_N(e) − F̂_N(e')‖₂ ≤ empirical_bound = expectation_bound + 2·estimation_radius with probability
      ≥ 1 − 2·alpha, for a run at e' with the same n and alpha.

    Attributes:
        mean: F̂_N(e), the average of the n clipped outputs (not in `to_record`).
        radius: R, the ℓ2 radius in input (conditioning-embedding) space.
        tv: 2Φ(R/(2σ)) − 1, the TV bound between the noisy-input distributions.
        output_bound: B, the largest ‖f − c‖₂ of a clipped output around the box center c.
        expectation_bound: 2B·tv.
        estimation_radius: (B/√n)(1 + sqrt(2 ln(1/α))) + 2B·noise_tv (the sampled noise is within
            noise_tv of the Gaussian per copy, so the sampler's mean is within 2B·noise_tv of F).
        empirical_bound: expectation_bound + 2·estimation_radius.
        output_range: the box [lo, hi] every output coordinate was clipped to.
        covered_labels: for a class-conditional model, the labels j whose embedding lies within the
            radius of this label's (a label change the certificate covers); empty otherwise.
        label: the class whose embedding was the input, or None for a raw conditioning vector.
    """

    mean: Any
    radius: float
    tv: float
    output_bound: float
    expectation_bound: float
    estimation_radius: float
    empirical_bound: float
    output_range: tuple[float, float]
    sigma: float
    n: int
    alpha: float
    seed: int | None
    covered_labels: tuple[int, ...] = ()
    label: int | None = None
    certified: bool = True
    noise_tv: float = 0.0

    def to_record(self) -> dict[str, Any]:
        record = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "mean"}
        record["output_range"] = list(self.output_range)
        record["covered_labels"] = list(self.covered_labels)
        return record


def _check_finite(value: Any, name: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok:
        raise InvalidParameterError(f"{name} must hold finite numbers, got {value!r}")
    return float(value)


class _ClampedSum(Reducer):
    """Sum of outputs clipped to [lo, hi]: the only thing the mean needs (memory O(output size))."""

    def __init__(self, lo: float, hi: float, device: torch.device | str = "cpu"):
        super().__init__(device)
        self.lo, self.hi = lo, hi
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, outputs: Any, batch: int) -> None:
        if not isinstance(outputs, torch.Tensor) or not torch.is_floating_point(outputs) or outputs.ndim < 1:
            raise ModelOutputError(f"the generator must return a floating tensor [b, ...], got {describe(outputs)}")
        if outputs.shape[0] != batch:
            raise ModelOutputError(f"the generator returned {outputs.shape[0]} outputs for a batch of {batch}")
        if self.total is not None and tuple(outputs.shape[1:]) != tuple(self.total.shape):
            raise ModelOutputError(f"output shape changed from {tuple(self.total.shape)} to {tuple(outputs.shape[1:])}")
        self._flag_nonfinite(outputs)  # NaN would pass through clamp
        part = outputs.double().clamp(self.lo, self.hi).sum(dim=0)
        self.total = part if self.total is None else self.total + part
        self.count += batch

    def result(self) -> tuple[torch.Tensor, int]:
        self._raise_if_bad()
        return self.total.cpu(), self.count


class MeanSmoother:
    """Mean smoothing of a randomized generator whose outputs are clipped to a box (THEORY.md §4e).

    F̂_N(x) = (1/N) Σ_i clip(f(x + ε_i), lo, hi), ε_i ~ N(0, σ²I), with f free to use its own
    randomness as long as it is independent of ε. A generator with a `reseed(seed, request_id)` method
    (`DiffusionGenerator`) is reseeded at the start of every request.

    Args:
        generator: A module, Runtime or callable: a batch [b, *input_shape] -> outputs [b, *out].
        sigma: Noise standard deviation σ > 0.
        output_range: (lo, hi): every output coordinate is clipped to it, so ‖f − c‖₂ ≤ B is known.
        batch_size: Noisy copies per generator call.
        input_shape: If given, inputs of any other shape are rejected.
        sampler: The Sampler to draw with.
    """

    def __init__(
        self,
        generator: nn.Module | Runtime | Callable,
        sigma: float,
        output_range: tuple[float, float] = (0.0, 1.0),
        batch_size: int = DEFAULT_GENERATION_BATCH,
        input_shape: tuple[int, ...] | None = None,
        sampler: Sampler | None = None,
    ):
        self.generator = generator
        self.runtime = as_runtime(generator)
        self.sigma = check_sigma(sigma)
        lo, hi = (_check_finite(v, "output_range") for v in output_range)
        if not lo < hi:
            raise InvalidParameterError(f"output_range must be (lo, hi) with lo < hi, got {output_range!r}")
        self.output_range = (lo, hi)
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self.sampler = sampler if sampler is not None else Sampler(batch_size)

    def output_bound(self, output_numel: int) -> float:
        """B = (hi − lo)·sqrt(k)/2: the largest ‖f − c‖₂ of a clipped output of k coordinates around the center c."""
        lo, hi = self.output_range
        return 0.5 * (hi - lo) * math.sqrt(output_numel)

    def certify(
        self,
        x: torch.Tensor,
        radius: float,
        n: int = 1000,
        alpha: float = 0.001,
        seed: int | None = None,
        request_id: int = 0,
    ) -> MeanCertificate:
        """The mean of n clipped outputs at x, with the §4e bounds for inputs within `radius`.

        Args:
            x: One input (no batch dimension).
            radius: R ≥ 0, the ℓ2 input radius.
            n: Samples averaged.
            alpha: Error probability of the estimation radius.
            seed, request_id: The request's random streams (input noise and generator randomness).

        Shapes:
            x: [*input_shape]; the mean has the generator's output shape.
        """
        x = check_input(x, self.input_shape)
        radius = check_positive(radius, "radius", allow_zero=True)
        n = check_count(n, "n")
        alpha = check_alpha(alpha)
        if hasattr(self.generator, "reseed"):
            self.generator.reseed(seed, request_id)
        key = RandomStream(seed, request_id).key(Purpose.ESTIMATION)
        total, count = self.sampler.run(self.runtime, x, n, self.sigma, key, _ClampedSum(*self.output_range, self.runtime.device))
        mean = (total / count).to(torch.float32)
        bound = self.output_bound(mean.numel())
        expectation = stats.mean_smoothing_bound(bound, radius, self.sigma)
        # The n outputs estimate the mean under the sampler, which is within 2B·τ of F (Gaussian noise).
        tau = noise_tv(x.numel())
        deviation = stats.vector_mean_deviation(bound, n, alpha) + 2.0 * bound * tau
        return MeanCertificate(
            mean=mean,
            radius=radius,
            tv=stats.tv_bound(radius, self.sigma),
            output_bound=bound,
            expectation_bound=expectation,
            estimation_radius=deviation,
            empirical_bound=expectation + 2.0 * deviation,
            output_range=self.output_range,
            sigma=self.sigma,
            n=n,
            alpha=alpha,
            seed=seed,
            noise_tv=tau,
        )


# --------------------------------------------------------------------------------------------------
# The smoothed class-conditional DDPM
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationTVBound:
    """The sample-free §4a bound on ONE generated sample, for every conditioning vector within `radius`.

    Attributes:
        radius: R, ℓ2 in conditioning-embedding space.
        tv: TV(P_e, P_e') ≤ 2Φ(R/(2σ)) − 1 + 2·noise_tv (the samples' noise is within noise_tv of the
            Gaussian at each input).
        w1_l2: W1 of the output distributions under the ℓ2 distance of images ≤ D·tv, D = the ℓ2
            diameter of [0, 1]^64 (= 8).
        covered_labels: labels whose embedding lies within R of this label's (empty for a raw vector).
    """

    radius: float
    sigma: float
    tv: float
    w1_l2: float
    covered_labels: tuple[int, ...] = ()
    label: int | None = None
    certified: bool = True
    noise_tv: float = 0.0

    def to_record(self) -> dict[str, Any]:
        record = {k: getattr(self, k) for k in self.__dataclass_fields__}
        record["covered_labels"] = list(self.covered_labels)
        return record


class SmoothedConditionalDiffusion:
    """The class-conditional digits DDPM smoothed with Gaussian noise on its class embedding.

    Each output is one DDPM sample conditioned on e + ε (ε ~ N(0, σ²I)), with the sampler's own
    randomness; `certify_mean` averages N of them, `certify_center` takes their center (THEORY.md §2).

    Args:
        ddpm: The class-conditional noise-prediction network (`smoothgen.models.load_ddpm()`).
        sigma: σ > 0, in conditioning-embedding units (the embedded model's class embeddings are
            typically ≈ 8 apart, see `class_distances`).
        guidance: Classifier-free guidance weight w ≥ 0.
        num_steps: Sampling steps (None: all T = 1000; fewer: evenly respaced, much cheaper).
        batch_size: Copies sampled at once.

    Example:
        >>> from smoothgen.models import load_ddpm
        >>> smoothed = SmoothedConditionalDiffusion(load_ddpm(), sigma=1.0, num_steps=100)
        >>> cert = smoothed.certify_mean(3, radius=0.5, n=200, seed=0)   # cert.mean: [1, 8, 8]
    """

    def __init__(
        self,
        ddpm: DigitsDDPM,
        sigma: float,
        *,
        guidance: float = 0.0,
        num_steps: int | None = None,
        batch_size: int = DEFAULT_GENERATION_BATCH,
    ):
        self.sigma = check_sigma(sigma)
        self.generator = DiffusionGenerator(ddpm, guidance, num_steps)
        self.ddpm = ddpm
        self.sampler = Sampler(batch_size)
        self.image_numel = math.prod(ddpm.sample_shape)
        self._mean = MeanSmoother(self.generator, self.sigma, (0.0, 1.0), input_shape=(self.embed_dim,), sampler=self.sampler)

    @property
    def embed_dim(self) -> int:
        return self.generator.embed_dim

    @property
    def num_classes(self) -> int:
        return int(self.ddpm.num_classes)

    @property
    def guidance(self) -> float:
        return self.generator.guidance

    @property
    def num_steps(self) -> int:
        return self.generator.num_steps

    @property
    def image_diameter(self) -> float:
        """ℓ2 diameter of the output space [0, 1]^64: 8."""
        return math.sqrt(self.image_numel)

    # -- the threat model: conditioning vectors and labels -------------------------------------------

    def _check_label(self, label: Any) -> int:
        if isinstance(label, torch.Tensor) and label.numel() == 1 and not torch.is_floating_point(label):
            label = int(label)
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= int(label) < self.num_classes:
            raise InvalidInputError(f"label must be an integer class in [0, {self.num_classes}), got {label!r}")
        return int(label)

    def embedding(self, label: int) -> torch.Tensor:
        """e_k = class_embedding(k), the conditioning vector of a class (a detached float32 copy). Shapes: [D]."""
        label = self._check_label(label)
        return self.ddpm.class_embedding.weight[label].detach().to("cpu", torch.float32).clone()

    def conditioning(self, label: int | None, class_embed: torch.Tensor | None) -> tuple[torch.Tensor, int | None]:
        if (label is None) == (class_embed is None):
            raise InvalidParameterError("pass exactly one of label and class_embed")
        if label is not None:
            label = self._check_label(label)
            return self.embedding(label), label
        return check_input(class_embed, (self.embed_dim,)).detach().to("cpu", torch.float32), None

    def class_distances(self, label: int) -> np.ndarray:
        """‖e_k − e_j‖₂ for every class j (0 for j = k). Shapes: returns [num_classes] float64."""
        label = self._check_label(label)
        table = self.ddpm.class_embedding.weight[: self.num_classes].detach().to("cpu", torch.float64)
        return (table - table[label]).norm(dim=1).numpy()

    def covered_labels(self, label: int, radius: float) -> tuple[int, ...]:
        """The labels j ≠ k with ‖e_k − e_j‖ ≤ radius: the label changes a certificate at `radius` covers."""
        radius = check_positive(radius, "radius", allow_zero=True)
        distances = self.class_distances(label)
        return tuple(int(j) for j in np.flatnonzero(distances <= radius) if j != label)

    def label_tv_bounds(self, label: int) -> dict[int, float]:
        """For every other class j: the §4a bound 2Φ(‖e_k − e_j‖/(2σ)) − 1 on TV(P_{e_k}, P_{e_j}).

        How far smoothing at this σ can make one sample of class k differ in distribution from one of
        class j; values near 1 mean the label still fully controls the output.
        """
        distances = self.class_distances(label)
        return {int(j): stats.tv_bound(float(d), self.sigma) for j, d in enumerate(distances) if j != label}

    # -- sampling and certificates ---------------------------------------------------------------

    def samples(
        self,
        label: int | None = None,
        *,
        class_embed: torch.Tensor | None = None,
        n: int = 16,
        seed: int | None = None,
        request_id: int = 0,
    ) -> torch.Tensor:
        """n samples of the smoothed generator: each conditioned on its own e + ε_i.

        Each sample's distribution is the one `tv_bound` certifies. Shapes: returns [n, 1, 8, 8] in [0, 1].
        """
        e, _ = self.conditioning(label, class_embed)
        n = check_count(n, "n")
        self.generator.reseed(seed, request_id)
        key = RandomStream(seed, request_id).key(Purpose.ESTIMATION)
        return self.sampler.outputs(as_runtime(self.generator), e, n, self.sigma, key)

    def tv_bound(self, radius: float, label: int | None = None) -> GenerationTVBound:
        """The sample-free §4a bound on one generated sample for conditioning moves of ℓ2 norm ≤ radius."""
        radius = check_positive(radius, "radius", allow_zero=True)
        tau = noise_tv(self.embed_dim)  # the samples' conditioning noise comes from the engine's sampler
        tv = stats.tv_bound(radius, self.sigma, tau)
        covered = () if label is None else self.covered_labels(label, radius)
        return GenerationTVBound(
            radius=radius,
            sigma=self.sigma,
            tv=tv,
            w1_l2=stats.wasserstein_bound(radius, self.sigma, self.image_diameter, noise_tv=tau),
            covered_labels=covered,
            label=label,
            noise_tv=tau,
        )

    def certify_mean(
        self,
        label: int | None = None,
        *,
        class_embed: torch.Tensor | None = None,
        radius: float = 0.0,
        n: int = 1000,
        alpha: float = 0.001,
        seed: int | None = None,
        request_id: int = 0,
    ) -> MeanCertificate:
        """The mean of n smoothed samples, with its §4e certificate at `radius` (see `MeanCertificate`).

        Args:
            label: The class k (its embedding e_k is the input), or None with class_embed.
            class_embed: A raw conditioning vector [D] instead of a label.
            radius: R ≥ 0, ℓ2 in conditioning-embedding space.
            n: Samples averaged.
            alpha: Error probability of the estimation radius.
            seed, request_id: The request's random streams.

        Returns:
            A `MeanCertificate`; its mean has shape [1, 8, 8].
        """
        e, label = self.conditioning(label, class_embed)
        cert = self._mean.certify(e, radius, n, alpha, seed, request_id)
        covered = () if label is None else self.covered_labels(label, cert.radius)
        return dataclasses.replace(cert, covered_labels=covered, label=label)

    def certify_center(
        self,
        label: int | None = None,
        *,
        class_embed: torch.Tensor | None = None,
        eps_in: float = 0.0,
        metric: str = "l2",
        n: int = 1000,
        m: int = 1000,
        delta: float = 0.05,
        alpha1: float = 0.005,
        alpha2: float = 0.005,
        n_candidates: int | None = None,
        seed: int | None = None,
        request_id: int = 0,
    ) -> CenterCertificate:
        """Center smoothing of the generated images (THEORY.md §2, §4d) with the conditioning vector as input.

        With probability ≥ 1 − `failure_probability` (α1 + α2, plus the candidate miss when n_candidates
        is given), d(ẑ(e), ẑ(e')) ≤ eps_out for every ‖e − e'‖₂ ≤ eps_in. Its
        `smoothing_error` is the distance of the center to ONE sample of the unsmoothed generator at e
        (the base generator is itself random). Labels covered: `covered_labels(label, eps_in)`.

        Args:
            metric: "l2" or "tv2d" (any metric `smoothgen.metrics` knows for [1, 8, 8] images works).
            Others: as `smoothgen.center.CenterSmoother.certify`.

        Returns:
            The `smoothgen.certificates.CenterCertificate`; its center has shape [1, 8, 8].
        """
        e, _ = self.conditioning(label, class_embed)
        smoother = CenterSmoother(
            self.generator, self.sigma, metric, n_candidates=n_candidates, input_shape=(self.embed_dim,), sampler=self.sampler
        )
        # One generator stream for the whole request: the center, check and radius samples (and the
        # smoothing-error sample) take consecutive, hence independent, stretches of it.
        self.generator.reseed(seed, request_id)
        return smoother.certify(e, eps_in, n, m, delta, alpha1, alpha2, seed, request_id)
