"""Mean smoothing of bounded outputs (docs/theory.md §4e): the mean of clipped outputs moves by at most
2B·TV between two conditionings (`MeanSmoother`, `MeanCertificate`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from smoothgen import stats
from smoothgen.engine import Purpose, RandomStream, Runtime, Sampler, as_runtime, noise_tv
from smoothgen.engine.reducers import Reducer, describe
from smoothgen.errors import InvalidParameterError, ModelOutputError
from smoothgen.validate import check_alpha, check_count, check_input, check_positive, check_sigma


#: Copies sampled at once. The pre-drawn sampler noise of a batch is batch × steps × 64 float32, which
#: bounds memory: 256 copies × 1000 steps = 65 MB.
DEFAULT_GENERATION_BATCH = 256


@dataclass(frozen=True)
class MeanCertificate:
    """Mean smoothing of a bounded generator: the mean output and how far it can move (docs/theory.md §4e).

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
    """Mean smoothing of a randomized generator whose outputs are clipped to a box (docs/theory.md §4e).

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
