"""Randomized smoothing of classifiers: Cohen, Rosenfeld & Kolter (ICML 2019), docs/theory.md §1.

The smoothed classifier g(x) = argmax_c P(f(x + ε) = c), ε ~ N(0, σ²I). `certify` returns a class and an
ℓ2 radius that hold with probability ≥ 1 − α; `predict` returns g(x) or abstains. Sampling goes through
the engine's Sampler; this file only holds the algorithm.
"""
from __future__ import annotations

import math
import os
import threading
from typing import Callable

import numpy as np
import torch

from smoothgen import stats
from smoothgen.certificates import ABSTAIN, ClassificationCertificate, Prediction, SequentialCertificate
from smoothgen.engine import DEFAULT_BATCH_SIZE, Purpose, RandomStream, Runtime, Sampler, as_runtime, noise_tv
from smoothgen.errors import InvalidParameterError
from smoothgen.validate import check_alpha, check_count, check_input, check_positive, check_shape, check_sigma

# Looks of the sequential test (docs/theory.md §6): a geometric schedule up to 10⁵ samples; and the estimation
# samples between two checks of the betting test (measured on the digits CNN, 2-core CPU: a model call on 100
# copies costs the same per copy as one on 1 000, and finer checks save samples on the many inputs that decide
# within the first few hundred; raise it on accelerators that want larger batches). Defined with the jobs'
# other defaults, so that the CLI, the service and this class take the same ones.
from smoothgen.job_specs import DEFAULT_CHECK_EVERY, DEFAULT_LOOKS  # noqa: E402

#: Tests of `certify_at`: "looks" (Clopper–Pearson at a few fixed looks, Bonferroni) and "betting" (an
#: anytime-valid betting confidence sequence checked after every `check_every` samples).
SEQUENTIAL_METHODS = ("looks", "betting")

#: Estimation samples between two checks of `certify`'s early abstention.
_ABSTAIN_CHECK_EVERY = 10_000

#: The environment variable that names the default backend of a smoother given a plain torch module.
BACKEND_ENV = "SMOOTHGEN_BACKEND"


def default_backend() -> str:
    """The backend a plain torch module runs on when none is given: ``$SMOOTHGEN_BACKEND``, else "auto" (the
    fastest runtime verified to reproduce eager, `smoothgen.engine.runtime.create_runtime`)."""
    return os.environ.get(BACKEND_ENV, "").strip() or "auto"


class SmoothedClassifier:
    """A base classifier f smoothed with isotropic Gaussian noise.

    Args:
        base: a torch module (or Runtime, or callable) mapping a batch [b, *input_shape] to logits
            [b, num_classes]. It may itself be randomized (e.g. a diffusion purifier in front of a
            classifier): the certificate holds for the smoothed version of whatever it computes.
        num_classes: number of classes.
        sigma: noise standard deviation σ > 0.
        batch_size: noisy copies per model call.
        input_shape: if given, inputs of any other shape are rejected.
        sampler: the Sampler to draw with (default: an in-process Sampler with `batch_size`).
        backend: what a torch module runs on: "auto" (the default, or ``$SMOOTHGEN_BACKEND``): at the first
            input, `create_runtime` picks the fastest runtime that reproduces eager on noisy copies of it (on
            CPU ONNX Runtime, then torch.compile, then eager; 3-4x Cohen et al.'s reference CERTIFY on the
            digits and CIFAR-size CNNs, benchmarks/RESULTS.md), "eager" (no export: the cheap path of unit
            tests), "compile", "onnxruntime" or "tensorrt". A Runtime, a plain callable or a module that draws
            its own noise (one with ``reseed``, such as `smoothgen.denoise.DiffSmooth`) runs as given.

    Raises:
        InvalidParameterError: a bad number, shape or backend.
    """

    ABSTAIN = ABSTAIN

    def __init__(
        self,
        base: torch.nn.Module | Runtime | Callable,
        num_classes: int,
        sigma: float,
        batch_size: int = DEFAULT_BATCH_SIZE,
        input_shape: tuple[int, ...] | None = None,
        sampler: Sampler | None = None,
        backend: str | None = None,
    ):
        from smoothgen.engine.runtime import BACKENDS

        name = "backend" if backend is not None else f"${BACKEND_ENV}"
        backend = default_backend() if backend is None else backend
        if backend not in BACKENDS:
            raise InvalidParameterError(f"{name} must be one of {BACKENDS}, got {backend!r}")
        self.num_classes = check_count(num_classes, "num_classes", minimum=2)
        self.sigma = check_sigma(sigma)
        self.input_shape = check_shape(input_shape)
        self.sampler = sampler if sampler is not None else Sampler(batch_size)
        self.backend = backend
        self._module: torch.nn.Module | None = None
        self._runtime: Runtime | None = None
        # A module that draws its own noise (DiffSmooth: `reseed`) cannot be checked against eager: it runs as is.
        compiled = backend != "eager" and not hasattr(base, "reseed")
        if isinstance(base, torch.nn.Module) and not isinstance(base, Runtime) and compiled:
            self._module, self._lock = base, threading.Lock()
            self._batch_size = getattr(self.sampler, "batch_size", batch_size)
        else:
            self._runtime = as_runtime(base)

    @property
    def runtime(self) -> Runtime:
        """The runtime the base model runs on; for a torch module under a compiled backend, the one chosen at
        the first input (before it: the module run eagerly)."""
        return self._runtime if self._runtime is not None else as_runtime(self._module)

    def _runtime_for(self, x: torch.Tensor) -> Runtime:
        """The runtime, built at the first input for a torch module (`create_runtime` with this input as its
        example and σ for auto's probe). A module that cannot be built (an input it does not take) runs
        eagerly for this call, so that its failure is explained as usual; the next input tries again."""
        if self._runtime is not None:
            return self._runtime
        from smoothgen.engine.runtime import create_runtime
        from smoothgen.errors import SmoothgenError

        with self._lock:
            if self._runtime is None:
                module = self._module
                device = next((p.device for p in module.parameters()), torch.device("cpu"))
                try:
                    self._runtime = create_runtime(module, x.detach().to(device), self.backend,
                                                   batch_size=self._batch_size, device=str(device), sigma=self.sigma)
                except SmoothgenError:
                    if self.backend != "auto":
                        raise  # an explicitly requested backend that cannot run here
                    return as_runtime(module)
        return self._runtime

    def predict(self, x: torch.Tensor, n: int, alpha: float, seed: int | None = None, request_id: int = 0) -> Prediction:
        """PREDICT: g(x), or ABSTAIN when the top class is not significantly ahead of the runner-up.

        The probability of returning a class other than g(x) is at most alpha.

        Args:
            x: one input (no batch dimension).
            n: number of noisy samples.
            alpha: error probability of the binomial test.
            seed: seed of this request's random stream (None: not reproducible).
            request_id: distinguishes inputs that share a seed.

        Shapes:
            x: [*input_shape]
        """
        x = check_input(x, self.input_shape)
        n = check_count(n, "n")
        alpha = check_alpha(alpha)
        tau = noise_tv(x.numel())
        level = stats.alpha_under_sampler(alpha, n, tau)  # the n copies are within n·τ of Gaussian ones
        stream = RandomStream(seed, request_id)
        counts = self._sample_counts(x, n, Purpose.PREDICT, stream)
        top_two = np.argsort(counts, kind="stable")[::-1][:2]
        n_a, n_b = int(counts[top_two[0]]), int(counts[top_two[1]])
        pvalue = stats.binomial_test_pvalue(n_a, n_a + n_b, 0.5)
        prediction = int(top_two[0]) if pvalue <= level else ABSTAIN
        return Prediction(prediction, pvalue, n_a, n_b, self.sigma, n, alpha, seed, noise_tv=tau)

    def certify(
        self, x: torch.Tensor, n0: int, n: int, alpha: float, seed: int | None = None, request_id: int = 0
    ) -> ClassificationCertificate:
        """CERTIFY: a class ĉA and radius R such that, with probability ≥ 1 − alpha, g(x') = ĉA for ‖x'−x‖₂ < R.

        Steps (docs/theory.md §1): choose ĉA from n0 selection samples; count its votes nA among n FRESH
        estimation samples (a separate random stream: reusing the selection votes would bias nA upward);
        pA_lower = one-sided Clopper–Pearson bound; certify R = σ·Φ⁻¹(pA_lower) if pA_lower > 1/2.

        Args:
            x: one input (no batch dimension).
            n0: selection samples.
            n: estimation samples.
            alpha: failure probability of the certificate.
            seed: seed of this request's random stream (None: not reproducible).
            request_id: distinguishes inputs that share a seed.

        Shapes:
            x: [*input_shape]
        """
        x = check_input(x, self.input_shape)
        n0 = check_count(n0, "n0")
        n = check_count(n, "n")
        alpha = check_alpha(alpha)
        stream = RandomStream(seed, request_id)
        tau = noise_tv(x.numel())
        c_hat = self._select(x, n0, stream)
        n_a, drawn = self._estimate(x, n, c_hat, alpha, stream)
        # A bound on pA under the sampler, minus its distance τ from the Gaussian, bounds pA under the Gaussian.
        p_lower = stats.lower_under_gaussian(stats.clopper_pearson_lower(n_a, n, alpha), tau) if drawn == n else 0.0
        if p_lower <= 0.5:
            return ClassificationCertificate(ABSTAIN, 0.0, p_lower, n_a, c_hat, self.sigma, n0, n, alpha, seed, drawn, tau)
        radius = stats.cohen_radius(self.sigma, p_lower)
        return ClassificationCertificate(c_hat, radius, p_lower, n_a, c_hat, self.sigma, n0, n, alpha, seed, drawn, tau)

    def certify_at(
        self,
        x: torch.Tensor,
        radius: float,
        alpha: float,
        n0: int = 100,
        looks: tuple[int, ...] | None = None,
        seed: int | None = None,
        request_id: int = 0,
        method: str = "looks",
        max_samples: int | None = None,
        check_every: int | None = None,
    ) -> SequentialCertificate:
        """CERTIFY-AT: is g certified at `radius` around x? Stops as soon as the answer is known.

        After choosing ĉA from n0 selection samples, tests pA > Φ(radius/σ) on ONE growing estimation
        sample, looking after looks[k] samples (docs/theory.md §6, Voráček 2024): with K looks, each look
        uses Clopper–Pearson at alpha/K, so the chance that any look wrongly certifies is ≤ alpha
        (union bound). It stops on the first look whose lower bound clears Φ(radius/σ) (certified) or
        whose upper bound falls to it or below (rejected: no more samples would certify).

        method="betting" (docs/theory.md §6, Waudby-Smith & Ramdas 2024) checks after EVERY `check_every`
        samples, up to `max_samples`, with no correction for the number of checks: it certifies once the
        capital of a bettor against H0: pA ≤ Φ(radius/σ) + τ reaches 1/alpha (`stats.betting_proves_above`;
        Ville's inequality bounds the chance that this ever happens under H0 by alpha, whenever the run
        stops), and rejects once the mirror bettor against pA ≥ Φ(radius/σ) − τ reaches 1/alpha (rejecting
        never makes a wrong certificate; it is wrong with probability ≤ alpha too). τ is the sampler's
        per-copy distance from the Gaussian: the sampled vote has mean within τ of the Gaussian pA, so
        proving it above Φ(radius/σ) + τ proves pA above Φ(radius/σ).

        Args:
            x: one input (no batch dimension).
            radius: the ℓ2 radius r > 0 to certify.
            alpha: failure probability of the certificate.
            n0: selection samples.
            looks: increasing cumulative sample counts at which the test looks (method "looks" only;
                default 10², 10³, 10⁴, 10⁵).
            seed, request_id: the request's random stream.
            method: "looks" or "betting" (`SEQUENTIAL_METHODS`).
            max_samples: most estimation samples of method "betting" (default 10⁵, the last default look).
            check_every: estimation samples between two checks of method "betting" (default 100).

        Shapes:
            x: [*input_shape]
        """
        x = check_input(x, self.input_shape)
        radius = check_positive(radius, "radius")
        alpha = check_alpha(alpha)
        n0 = check_count(n0, "n0")
        if not isinstance(method, str) or method not in SEQUENTIAL_METHODS:
            raise InvalidParameterError(f"method must be one of {SEQUENTIAL_METHODS}, got {method!r}")
        if method == "betting":
            if looks is not None:
                raise InvalidParameterError("looks applies to method='looks'; method='betting' checks after every "
                                            "check_every samples up to max_samples")
            max_samples = DEFAULT_LOOKS[-1] if max_samples is None else check_count(max_samples, "max_samples")
            check_every = DEFAULT_CHECK_EVERY if check_every is None else check_count(check_every, "check_every")
            return self._certify_at_betting(x, radius, alpha, n0, seed, request_id, max_samples, check_every)
        if max_samples is not None or check_every is not None:
            raise InvalidParameterError("max_samples and check_every apply to method='betting'; method='looks' "
                                        "looks at `looks`")
        looks = DEFAULT_LOOKS if looks is None else looks
        if isinstance(looks, (str, bytes)) or not hasattr(looks, "__iter__"):
            raise InvalidParameterError(f"looks must be an increasing sequence of sample counts, got {looks!r}")
        looks = tuple(check_count(k, "looks") for k in looks)
        if not looks or any(b <= a for a, b in zip(looks, looks[1:])):
            raise InvalidParameterError(f"looks must be a non-empty increasing sequence, got {looks}")
        stream = RandomStream(seed, request_id)
        tau = noise_tv(x.numel())
        c_hat = self._select(x, n0, stream)
        threshold = stats.normal_cdf(radius / self.sigma)
        level = alpha / len(looks)
        n_a, drawn, key = 0, 0, stream.key(Purpose.ESTIMATION)
        for look in looks:
            counts = self.sampler.counts(self._runtime_for(x), x, look - drawn, self.sigma, self.num_classes, key,
                                         start=drawn, total=looks[-1])
            n_a, drawn = n_a + int(counts[c_hat]), look
            p_lower = stats.lower_under_gaussian(stats.clopper_pearson_lower(n_a, drawn, level), tau)
            p_upper = stats.upper_under_gaussian(stats.clopper_pearson_upper(n_a, drawn, level), tau)
            decision = "certified" if p_lower > threshold else ("rejected" if p_upper <= threshold else "undecided")
            if decision != "undecided":
                break
        certified = decision == "certified"
        return SequentialCertificate(
            prediction=c_hat if certified else ABSTAIN,
            certified=certified,
            decision=decision,
            radius=radius,
            certified_radius=stats.cohen_radius(self.sigma, p_lower),
            p_lower=p_lower,
            p_upper=p_upper,
            count=n_a,
            samples=drawn,
            selected=c_hat,
            sigma=self.sigma,
            n0=n0,
            looks=looks,
            alpha=alpha,
            seed=seed,
            noise_tv=tau,
        )

    def _certify_at_betting(
        self, x: torch.Tensor, radius: float, alpha: float, n0: int, seed: int | None, request_id: int,
        max_samples: int, check_every: int,
    ) -> SequentialCertificate:
        """CERTIFY-AT with the betting test, checked after every `check_every` estimation samples."""
        stream = RandomStream(seed, request_id)
        tau = noise_tv(x.numel())
        c_hat = self._select(x, n0, stream)  # the selection stream, disjoint from the estimation one
        threshold = stats.normal_cdf(radius / self.sigma)
        # Nulls of the two bettors, on the SAMPLED vote's mean pS (|pS − pA| ≤ τ), each rounded outward:
        # pS > certify_above implies pA > threshold; pS < reject_below implies pA < threshold.
        certify_above = stats.upper_under_gaussian(threshold, tau)
        reject_below = stats.lower_under_gaussian(threshold, tau)
        # The rejecting bettor bets on the zeros against H0: 1 − pS ≤ 1 − reject_below (rounded up: weaker claim).
        zeros_above = min(stats.BELOW_ONE, math.nextafter(1.0 - reject_below, math.inf))
        decision, n_a, drawn, key = "undecided", 0, 0, stream.key(Purpose.ESTIMATION)
        while drawn < max_samples:
            chunk = min(check_every, max_samples - drawn)
            counts = self.sampler.counts(self._runtime_for(x), x, chunk, self.sigma, self.num_classes, key,
                                         start=drawn, total=max_samples)
            n_a, drawn = n_a + int(counts[c_hat]), drawn + chunk
            if certify_above < 1.0 and stats.betting_proves_above(n_a, drawn, certify_above, alpha):
                decision = "certified"
                break
            if 0.0 < reject_below and stats.betting_proves_above(drawn - n_a, drawn, zeros_above, alpha):
                decision = "rejected"
                break
        # Bounds to report: the confidence sequence's ends at the stop, each valid on the same event as the
        # decision (the capital of the true pS never reaching 1/alpha); the decided null is one such end.
        lower, upper = stats.betting_lower(n_a, drawn, alpha), stats.betting_upper(n_a, drawn, alpha)
        if decision == "certified":
            lower = max(lower, certify_above)
        elif decision == "rejected":
            upper = min(upper, reject_below)
        p_lower = stats.lower_under_gaussian(lower, tau)
        p_upper = stats.upper_under_gaussian(upper, tau)
        certified = decision == "certified"
        certified_radius = stats.cohen_radius(self.sigma, p_lower)
        if certified:  # proved pA > Φ(radius/σ): radius itself is certified, whatever the last ulp of p_lower
            certified_radius = max(radius, certified_radius)
        return SequentialCertificate(
            prediction=c_hat if certified else ABSTAIN,
            certified=certified,
            decision=decision,
            radius=radius,
            certified_radius=certified_radius,
            p_lower=p_lower,
            p_upper=p_upper,
            count=n_a,
            samples=drawn,
            selected=c_hat,
            sigma=self.sigma,
            n0=n0,
            looks=(),
            alpha=alpha,
            seed=seed,
            noise_tv=tau,
            method="betting",
            max_samples=max_samples,
            check_every=check_every,
        )

    def _select(self, x: torch.Tensor, n0: int, stream: RandomStream) -> int:
        """Step 1: ĉA = argmax of the selection counts."""
        return int(np.argmax(self._sample_counts(x, n0, Purpose.SELECTION, stream)))

    def _estimate(self, x: torch.Tensor, n: int, c_hat: int, alpha: float, stream: RandomStream) -> tuple[int, int]:
        """Step 2: nA = votes for ĉA among n fresh samples, and how many were drawn.

        Drawn in chunks; stops early only when even all remaining votes for ĉA could not lift the
        Clopper–Pearson bound above 1/2 — then the full run would abstain too, so the answer is the same.
        """
        key = stream.key(Purpose.ESTIMATION)
        n_a = drawn = 0
        while drawn < n:
            chunk = min(_ABSTAIN_CHECK_EVERY, n - drawn)
            counts = self.sampler.counts(self._runtime_for(x), x, chunk, self.sigma, self.num_classes, key, start=drawn, total=n)
            n_a, drawn = n_a + int(counts[c_hat]), drawn + chunk
            if drawn < n and stats.clopper_pearson_lower(n_a + (n - drawn), n, alpha) <= 0.5:
                break
        return n_a, drawn

    def _sample_counts(self, x: torch.Tensor, num: int, purpose: Purpose, stream: RandomStream) -> np.ndarray:
        return self.sampler.counts(self._runtime_for(x), x, num, self.sigma, self.num_classes, stream.key(purpose))
