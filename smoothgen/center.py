"""Center smoothing of models with metric-space outputs: Kumar & Goldstein (NeurIPS 2021), docs/theory.md §2.

The smoothed output f̂(x) is the center ẑ of a small ball holding more than half of the distribution of
f(x + ε). `smooth` finds it (or abstains); `certify` bounds how far it can move: with probability
≥ 1 − α1 − α2 − candidate_miss, d(f̂(x), f̂(x')) ≤ ε_out for every ‖x − x'‖₂ ≤ ε_in (candidate_miss > 0 only
for the high-dimensional variant with n_candidates < n; see `CenterSmoother`).

Three independent sample sets are drawn, each from its own random stream: the n samples that choose the
center, the n fresh samples of the acceptance check, and the m fresh samples of the certified radius.

The noise is isotropic Gaussian on the input tensor (σ), or any `CenterNoise` (``noise=``): an object that
draws the noisy model inputs of copy i as a pure function of (key, i) and states the level p the
certificate's ball must hold for a threat of a given size. Token-embedding Gaussian noise and randomized
token ablation (p = 1/2 + Δ + Δ_r, `stats.center_ablation_level`) are such noises
(`smoothgen.encoders.PromptNoise`); the algorithm and its accounting (Δ1 + τ, q + τ, the candidate miss
at τ) are the same for all.

Distances and selections run in smoothgen's C++ core (`smoothgen._C`) for the built-in metrics it
implements (l2, l1, cosine, tv1d, tv2d) on CPU float tensors, when it is built and enabled, and in the
fused Triton kernels (smoothgen.kernels) for l2, l1 and cosine on CUDA tensors; the torch code here is
the reference, used for everything else and with `SMOOTHGEN_CORE=0`. Both give the same medians
and centers for the same distances, and distances equal to float32 rounding (tests/csrc).
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Any, Callable, Protocol, runtime_checkable

import torch

from smoothgen import _core, kernels, metrics, stats
from smoothgen.certificates import CenterCertificate, CenterSmoothingResult
from smoothgen.engine import DEFAULT_BATCH_SIZE, Purpose, RandomStream, Runtime, Sampler, as_runtime, noise_tv
from smoothgen.engine.noise import NoiseKey
from smoothgen.engine.reducers import KeepOutputs
from smoothgen.engine.sampler import check_batch_size, run_model
from smoothgen.errors import InvalidInputError, InvalidParameterError, ModelOutputError
from smoothgen.metrics import Metric, get_metric
from smoothgen.validate import check_alpha, check_count, check_input, check_positive, check_shape, check_sigma

#: Distance-matrix rows computed at once while choosing the center, as a budget of matrix entries
#: (16 M float32 = 64 MiB), so that n = 10⁴ never holds the full n×n matrix.
_ROW_BLOCK_ENTRIES = 1 << 24


def _select(outputs: Any, index: torch.Tensor | slice | int) -> Any:
    """Rows of a batch of outputs (a tensor [n, ...] or a list of n sequences)."""
    if isinstance(outputs, torch.Tensor):
        return outputs[index] if not isinstance(index, int) else outputs[index : index + 1]
    if isinstance(index, int):
        return [outputs[index]]
    if isinstance(index, slice):
        return outputs[index]
    return [outputs[i] for i in index.tolist()]


def _length(outputs: Any) -> int:
    return outputs.shape[0] if isinstance(outputs, torch.Tensor) else len(outputs)


#: The built-in metrics the C++ core computes, by their pairwise function (a metric registered over a
#: built-in name with another function is not one of them), and the core's metric kind.
_CORE_KINDS = {
    fn: kind
    for fn, kind in (
        (getattr(metrics, "_l2", None), 0),
        (getattr(metrics, "_l1", None), 1),
        (getattr(metrics, "_cosine", None), 2),
        (getattr(metrics, "_tv1d", None), 3),
        (getattr(metrics, "_tv2d", None), 4),
    )
    if fn is not None
}
#: Output dtypes whose reference distances are computed in float32 (metrics._float_outputs).
_CORE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _core_metric(metric: Metric, *outputs: Any) -> dict[str, int] | None:
    """The core's metric arguments for these outputs, or None when the core cannot compute them exactly
    as the reference would (then the reference runs): core off, a metric it lacks, outputs that are not
    non-empty CPU float32/16 tensors of one shape, or shapes the metric rejects (the reference says why)."""
    if not _core.enabled():
        return None
    kind = _CORE_KINDS.get(metric.pairwise)
    if kind is None:
        return None
    shape = None
    for x in outputs:
        if not isinstance(x, torch.Tensor) or x.device.type != "cpu" or x.dtype not in _CORE_DTYPES:
            return None
        if x.dim() < 1 or x.shape[0] < 1 or (shape is not None and x.shape[1:] != shape):
            return None
        shape = x.shape[1:]
    if shape is None or math.prod(shape) == 0:
        return None
    args = {"kind": kind}
    if kind == 3:  # tv1d: along the last axis
        if len(shape) < 1:
            return None
        args["length"] = shape[-1]
    elif kind == 4:  # tv2d: [C, H, W] or [H, W]
        if len(shape) not in (2, 3):
            return None
        args["channels"], args["height"], args["width"] = (1, *shape) if len(shape) == 2 else tuple(shape)
    return args


#: Built-in metrics the fused GPU kernels compute (smoothgen.kernels.min_median_center / median_distances).
_KERNEL_METRICS = {
    fn: name
    for fn, name in ((getattr(metrics, "_l2", None), "l2"), (getattr(metrics, "_l1", None), "l1"), (getattr(metrics, "_cosine", None), "cosine"))
    if fn is not None
}


def _kernel_metric(metric: Metric, *outputs: Any) -> str | None:
    """The kernels' metric name when every output batch is a CUDA float tensor under l2/l1/cosine, else None."""
    name = _KERNEL_METRICS.get(metric.pairwise)
    if name is None:
        return None
    for x in outputs:
        if not isinstance(x, torch.Tensor) or not x.is_cuda or x.dtype not in _CORE_DTYPES or x.dim() < 2:
            return None
    return name


def _core_rows(x: torch.Tensor):
    """Outputs [n, *shape] as a C-contiguous float32 NumPy array [n, prod(shape)] (a view when possible)."""
    x = x.detach()
    if x.dtype != torch.float32:
        x = x.float()  # what the reference computes in for half precision
    return x.reshape(x.shape[0], -1).contiguous().numpy()


def median_distances(candidates: Any, samples: Any, metric: Metric) -> torch.Tensor:
    """For each candidate, the median (the ⌈n/2⌉-th smallest, an order statistic) of its distances to the samples.

    Computed in row blocks so that at most `_ROW_BLOCK_ENTRIES` distances exist at once (in the C++ core
    when it can, see `_core_metric`; else by `median_distances_reference`).

    Shapes:
        candidates: n_c outputs, samples: n outputs -> [n_c]
    """
    kernel_metric = _kernel_metric(metric, candidates, samples)
    if kernel_metric is not None:  # CUDA: tiled Triton distances + row medians
        return kernels.median_distances(candidates, samples, kernel_metric)
    args = _core_metric(metric, candidates, samples)
    if args is not None:
        try:
            return torch.from_numpy(_core.get().median_distances(_core_rows(candidates), _core_rows(samples), **args))
        except _core.CoreError:
            pass  # NaN/Inf outputs, a zero vector for cosine, ...: the reference raises the documented error
    return median_distances_reference(candidates, samples, metric)


def median_distances_reference(candidates: Any, samples: Any, metric: Metric) -> torch.Tensor:
    """`median_distances` in torch: `metric.distances` by row blocks, then torch.kthvalue.

    Shapes:
        candidates: n_c outputs, samples: n outputs -> [n_c]
    """
    n_c, n = _length(candidates), _length(samples)
    k = (n + 1) // 2
    rows = max(1, _ROW_BLOCK_ENTRIES // max(n, 1))
    medians = []
    for start in range(0, n_c, rows):
        block = metric.distances(_select(candidates, slice(start, start + rows)), samples)
        medians.append(torch.kthvalue(block, k, dim=1).values)
    return torch.cat(medians)


def min_median_center(samples: Any, metric: Metric, n_candidates: int | None = None) -> tuple[Any, float]:
    """ẑ = argmin over candidates z of median_j d(z, Z_j), and r̂ = that median (docs/theory.md §2, SMOOTH step 1).

    Args:
        samples: the n selection samples Z.
        metric: the output metric.
        n_candidates: None: every sample is a candidate (O(n²) distances, β = 2γ); an integer n_c:
            the first n_c samples are the candidates (the high-dimensional variant, O(n_c·n)). The
            samples are i.i.d., so the first n_c are a uniformly random subset.

    Returns:
        (ẑ as a batch of one output, r̂).
    """
    n = _length(samples)
    kernel_metric = _kernel_metric(metric, samples)
    if kernel_metric is not None:  # CUDA: never holds n×n, same argmin (first index on ties)
        best, radius = kernels.min_median_center(samples, kernel_metric, n_candidates)
        return _select(samples, int(best)), float(radius)
    args = _core_metric(metric, samples) if n_candidates is None or n_candidates >= 1 else None
    if args is not None:
        try:
            # The same argmin (first index on ties) of the same medians; rows whose median provably
            # exceeds the best one found skip their selection.
            best, radius = _core.get().min_median_center(
                _core_rows(samples), 0 if n_candidates is None else int(n_candidates), **args
            )
            return _select(samples, int(best)), float(radius)
        except _core.CoreError:
            pass  # the reference raises the documented error
    candidates = samples if n_candidates is None else _select(samples, slice(0, min(n_candidates, n)))
    medians = median_distances(candidates, samples, metric)
    best = int(torch.argmin(medians))
    return _select(candidates, best), float(medians[best])


@runtime_checkable
class CenterNoise(Protocol):
    """A smoothing distribution other than isotropic Gaussian noise on the input tensor, for `CenterSmoother`.

    Kumar & Goldstein's proof uses the noise in one place only: a ball B with P_x(B) ≥ p must keep
    P_x'(B) ≥ 1/2 + Δ at every x' of the threat model (docs/theory.md §2). A noise states that p for a threat
    of size ε (`level`), draws the copies, and says how far its sampler is from the distribution the
    level was proved for (`noise_tv`, charged exactly as the Gaussian sampler's τ).

    Attributes:
        sigma: σ reported in the certificate (None for noise without one, e.g. token ablation).
    """

    sigma: float | None

    def check_input(self, x: Any) -> Any:
        """The validated input (raise a SmoothgenError for a bad one)."""

    def check_radius(self, eps_in: Any) -> float:
        """The validated threat size ε (raise InvalidParameterError for a bad one)."""

    def copies(self, x: Any, key: NoiseKey, start: int, count: int) -> Any:
        """Model inputs of copies start .. start + count − 1 (copy i a pure function of (key, i))."""

    def clean(self, x: Any) -> Any:
        """The noise-free model input, as a batch of one (for the smoothing error)."""

    def noise_tv(self, x: Any) -> float:
        """τ: the per-copy total variation between the sampled copies and the distribution of `level`."""

    def level(self, x: Any, eps_in: float, delta: float) -> float:
        """p such that P_x(B) ≥ p implies P_x'(B) ≥ 1/2 + Δ for every x' within eps_in of x and every
        set B; a value above 1 means no certificate at eps_in (the certificate abstains, "q > 1")."""


class CenterSmoother:
    """Center smoothing of f under isotropic Gaussian input noise, or under any `CenterNoise`.

    Args:
        f: a torch module, Runtime or callable mapping a batch [b, *input_shape] to outputs: a tensor
            [b, *output_shape], or a list of b token sequences for sequence metrics. With ``noise=``,
            a batch is whatever ``noise.copies`` makes.
        sigma: noise standard deviation σ > 0 (Gaussian noise on the input); None with ``noise=``.
        metric: a registered metric name ("l2", "l1", "cosine", "angular", "tv1d", "tv2d", "jaccard",
            "levenshtein", "w1", or one you registered) or a `Metric`.
        batch_size: noisy copies per model call.
        n_candidates: None for the exact min-median center over all n samples; an integer k for the
            high-dimensional variant that picks the center among k samples (≈ 30 in the paper). Its
            certificates charge the chance (1/2 − Δ + τ)^k that no candidate lies in the ball the
            proof needs (`CenterCertificate.candidate_miss`): 0.45^30 ≈ 4·10⁻¹¹ at Δ = 0.05, but 0.45
            at k = 1.
        input_shape: if given, inputs of any other shape are rejected.
        sampler: the Sampler to draw with (Gaussian noise only).
        noise: a `CenterNoise` instead of σ: it draws the copies (in batches of batch_size) and gives
            the certificate's level p; eps_in is then in its unit (e.g. substituted tokens).

    Raises:
        InvalidParameterError: neither or both of sigma and noise, a sampler with noise, bad σ, metric,
            batch size or n_candidates.
    """

    def __init__(
        self,
        f: torch.nn.Module | Runtime | Callable,
        sigma: float | None = None,
        metric: str | Metric = "l2",
        batch_size: int = DEFAULT_BATCH_SIZE,
        n_candidates: int | None = None,
        input_shape: tuple[int, ...] | None = None,
        sampler: Sampler | None = None,
        *,
        noise: CenterNoise | None = None,
    ):
        self.runtime = as_runtime(f)
        self.noise = noise
        if noise is None:
            if sigma is None:
                raise InvalidParameterError("CenterSmoother needs sigma (Gaussian input noise) or noise=")
            self.sigma = check_sigma(sigma)
        else:
            if sigma is not None:
                raise InvalidParameterError("give sigma or noise=, not both (a noise carries its own σ)")
            if not isinstance(noise, CenterNoise):
                raise InvalidParameterError(f"noise must implement CenterNoise, got {type(noise).__name__}")
            if sampler is not None:
                raise InvalidParameterError("a Sampler draws Gaussian copies of the input; with noise= the noise draws them")
            self.sigma = getattr(noise, "sigma", None)
            self.batch_size = check_batch_size(batch_size)
        self.metric = get_metric(metric)
        self.n_candidates = None if n_candidates is None else check_count(n_candidates, "n_candidates")
        self.input_shape = check_shape(input_shape)
        self.sampler = sampler if sampler is not None else Sampler(batch_size)

    @property
    def beta(self) -> float:
        """Approximation factor of the min-median center: β = 2γ."""
        return 2.0 * self.metric.gamma

    def smooth(
        self,
        x: torch.Tensor,
        n: int = 10_000,
        delta: float = 0.05,
        alpha1: float = 0.005,
        seed: int | None = None,
        request_id: int = 0,
    ) -> CenterSmoothingResult:
        """SMOOTH: the center ẑ, or abstain when its ball does not provably hold about half the mass.

        Args:
            x: one input (no batch dimension; with ``noise=``, what the noise takes).
            n: samples for choosing the center, and again (fresh) for the acceptance check.
            delta: the tolerance Δ ∈ (0, 1/2).
            alpha1: error probability of this step.
            seed, request_id: the request's random stream.

        Shapes:
            x: [*input_shape]
        """
        x, n, delta, alpha1 = self._check(x, n, delta, alpha1, "alpha1")
        tau = noise_tv(x.numel()) if self.noise is None else self.noise.noise_tv(x)
        stream = RandomStream(seed, request_id)
        center, center_radius = self._choose_center(x, n, stream)
        p = self._fraction_within(x, n, center, center_radius, stream)
        accepted, delta1, delta2 = stats.center_smoothing_check(p, n, alpha1, delta, n_select=n, noise_tv=tau)
        return CenterSmoothingResult(
            center=center[0] if not isinstance(center, torch.Tensor) else center[0].clone(),
            center_radius=center_radius,
            p=p,
            delta1=delta1,
            delta2=delta2,
            abstained=not accepted,
            n=n,
            delta=delta,
            alpha1=alpha1,
            n_candidates=self.n_candidates,
            seed=seed,
            noise_tv=tau,
        )

    def certify(
        self,
        x: torch.Tensor,
        eps_in: float,
        n: int = 10_000,
        m: int = 10_000,
        delta: float = 0.05,
        alpha1: float = 0.005,
        alpha2: float = 0.005,
        seed: int | None = None,
        request_id: int = 0,
    ) -> CenterCertificate:
        """CERTIFY: ε_out such that d(f̂(x), f̂(x')) ≤ ε_out for all ‖x − x'‖₂ ≤ eps_in, with probability
        ≥ 1 − α1 − α2 − candidate_miss (the certificate's `failure_probability`).

        Steps (docs/theory.md §2): SMOOTH with n samples; p = Φ(Φ⁻¹(1/2 + Δ) + ε_in/σ) (with ``noise=``,
        p = noise.level(x, ε_in, Δ)); q = p + τ + sqrt(ln(1/α2)/(2m)) (abstain if q > 1); R̂ = the
        ⌈q·m⌉-th smallest distance of m fresh samples to ẑ; ε_out = γ·(1 + β)·R̂. τ = the sampler's
        per-copy distance from the Gaussian (smoothgen.engine.noise_tv; ``noise.noise_tv(x)``);
        candidate_miss = (1/2 − Δ + τ)^k for the high-dimensional variant.

        Args:
            x: one input (no batch dimension; with ``noise=``, what the noise takes).
            eps_in: the input radius ε_in ≥ 0 to certify (with ``noise=``, a threat size in its unit).
            n: samples of the SMOOTH step (each of its two phases).
            m: fresh samples for the certified radius (the paper uses 10⁶).
            delta: Δ ∈ (0, 1/2).
            alpha1, alpha2: error probabilities of the two steps (they add up).
            seed, request_id: the request's random stream.

        Shapes:
            x: [*input_shape]
        """
        return self.certify_radii(x, [eps_in], n=n, m=m, delta=delta, alpha1=alpha1, alpha2=alpha2, seed=seed,
                                  request_id=request_id)[0]

    def certify_radii(
        self,
        x: torch.Tensor,
        radii: Any,
        n: int = 10_000,
        m: int = 10_000,
        delta: float = 0.05,
        alpha1: float = 0.005,
        alpha2: float = 0.005,
        seed: int | None = None,
        request_id: int = 0,
    ) -> list[CenterCertificate]:
        """CERTIFY at several input radii from one set of samples: the certificate curve ε_in ↦ ε_out at this σ.

        The SMOOTH step and the m radius samples are drawn once; each radius reads its own order statistic
        ⌈q(ε_in)·m⌉ of the same m distances. Each certificate is exactly the one `certify` returns for its
        radius (same seed, same numbers), and they hold all at once with probability ≥ 1 − α1 − α2 −
        candidate_miss, not only one at a time: the one-sided DKW inequality bounds the empirical CDF at
        every level simultaneously (docs/theory.md §2).

        Args:
            radii: input radii ε_in ≥ 0 (with ``noise=``, threat sizes in its unit), one or more.
            the rest: as `certify`.

        Returns:
            One `CenterCertificate` per radius, in the order given.
        """
        try:
            radii = list(radii)
        except TypeError:
            raise InvalidParameterError(f"radii must be a sequence of input radii, got {type(radii).__name__}") from None
        if not radii:
            raise InvalidParameterError("radii must hold at least one input radius")
        if self.noise is None:
            radii = [check_positive(eps, "eps_in", allow_zero=True) for eps in radii]
        else:
            radii = [self.noise.check_radius(eps) for eps in radii]
        m = check_count(m, "m")
        alpha2 = check_alpha(alpha2, "alpha2")
        alpha1 = check_alpha(alpha1, "alpha1")
        if alpha1 + alpha2 >= 1.0:
            raise InvalidParameterError(f"alpha1 + alpha2 = {alpha1 + alpha2} must be below 1 (they add up)")
        smoothed = self.smooth(x, n, delta, alpha1, seed, request_id)
        center = smoothed.center[None] if isinstance(smoothed.center, torch.Tensor) else [smoothed.center]
        levels = []
        for eps_in in radii:
            if self.noise is None:
                p = stats.center_certify_level(eps_in, self.sigma, delta)
            else:
                p = float(self.noise.level(x, eps_in, delta))
            if p <= 1.0:
                q = stats.dkw_quantile_level(p, m, alpha2, noise_tv=smoothed.noise_tv)
            else:  # no ball holds mass p > 1 (a discrete noise's level at a large threat): q > 1 below
                q = p + smoothed.noise_tv + stats.hoeffding_radius(m, alpha2)
            levels.append((p, q, stats.order_statistic_index(q, m)))
        distances = None
        if not smoothed.abstained and any(k is not None for _, _, k in levels):
            distances = self._distances_to(x, m, center, Purpose.CENTER_RADIUS, RandomStream(seed, request_id)).cpu().numpy()
        smoothing_error = self.smoothing_error(x, center)
        candidate_miss = stats.center_candidate_miss(delta, self.n_candidates, n, smoothed.noise_tv)
        certificates = []
        for eps_in, (p, q, k) in zip(radii, levels):
            # q > 1 depends only on the parameters (ε_in too large for σ and m): report it before the check.
            reason = "q > 1" if k is None else ("center check failed" if smoothed.abstained else None)
            r_hat = math.inf if reason is not None else stats.order_statistic(distances, k)
            eps_out = math.inf if reason is not None else stats.center_eps_out(self.metric.gamma, self.beta, r_hat)
            certificates.append(CenterCertificate(
                center=smoothed.center,
                abstained=reason is not None,
                reason=reason,
                eps_in=eps_in,
                eps_out=eps_out,
                r_hat=r_hat,
                center_radius=smoothed.center_radius,
                smoothing_error=smoothing_error,
                p=p,
                q=q,
                sigma=self.sigma,
                metric=self.metric.name,
                gamma=self.metric.gamma,
                beta=self.beta,
                n=n,
                m=m,
                delta=delta,
                alpha1=alpha1,
                alpha2=alpha2,
                n_candidates=self.n_candidates,
                seed=seed,
                noise_tv=smoothed.noise_tv,
                candidate_miss=candidate_miss,
            ))
        return certificates

    def smoothing_error(self, x: torch.Tensor, center: Any) -> float:
        """d(ẑ, f(x)): distance between the smoothed output (a batch of one) and the base model's clean output."""
        clean = self.runtime.run(x.to(self.runtime.device)[None] if self.noise is None else self.noise.clean(x))
        if _length(clean) != 1:
            raise ModelOutputError(f"model returned {_length(clean)} outputs for a batch of 1")
        return float(self.metric.distances(center, clean)[0, 0])

    def _check(self, x, n, delta, alpha, alpha_name):
        if self.noise is None:
            x = check_input(x, self.input_shape)
        else:
            x = self.noise.check_input(x)
            if self.input_shape is not None and tuple(getattr(x, "shape", ())) != self.input_shape:
                raise InvalidInputError(f"input has shape {tuple(getattr(x, 'shape', ()))}, expected {self.input_shape}")
        n = check_count(n, "n")
        if isinstance(delta, bool) or not isinstance(delta, Real) or not (0.0 < delta < 0.5):
            raise InvalidParameterError(f"delta must lie strictly between 0 and 1/2, got {delta!r}")
        return x, n, float(delta), check_alpha(alpha, alpha_name)

    def _choose_center(self, x: torch.Tensor, n: int, stream: RandomStream) -> tuple[Any, float]:
        """SMOOTH step 1: n samples and their min-median center."""
        samples = self._outputs(x, n, stream.key(Purpose.CENTER))
        return min_median_center(samples, self.metric, self.n_candidates)

    def _fraction_within(self, x: torch.Tensor, n: int, center: Any, radius: float, stream: RandomStream) -> float:
        """SMOOTH step 2: fraction of n fresh samples within r̂ of ẑ."""
        distances = self._distances_to(x, n, center, Purpose.CENTER_CHECK, stream)
        return float((distances <= radius).sum()) / n

    def _distances_to(self, x: torch.Tensor, num: int, center: Any, purpose: Purpose, stream: RandomStream) -> torch.Tensor:
        """Distances of `num` fresh samples to the center, reduced batch by batch (only num numbers kept)."""
        return self._outputs(x, num, stream.key(purpose), reduce=lambda out: _center_distances(self.metric, out, center))

    def _outputs(self, x: Any, num: int, key: NoiseKey, reduce: Callable[[Any], torch.Tensor] | None = None) -> Any:
        """The outputs of `num` noisy copies of x (or `reduce` of each batch): the Sampler's Gaussian copies,
        or the noise's copies in batches of batch_size (copy i depends on (key, i) only, not on the batching)."""
        if self.noise is None:
            if reduce is None:
                return self.sampler.outputs(self.runtime, x, num, self.sigma, key)
            return self.sampler.outputs(self.runtime, x, num, self.sigma, key, reduce=reduce)
        size = self.batch_size if self.runtime.max_batch is None else min(self.batch_size, self.runtime.max_batch)
        reducer = KeepOutputs(reduce, self.runtime.device)
        for start in range(0, num, size):
            count = min(size, num - start)
            reducer.add(run_model(self.runtime, self.noise.copies(x, key, start, count)), count)
        return reducer.result()


def _center_distances(metric: Metric, outputs: Any, center: Any) -> torch.Tensor:
    """d(outputs_i, ẑ) for a batch of outputs and the center (a batch of one): [b]."""
    args = _core_metric(metric, outputs, center)
    if args is not None:
        try:
            return torch.from_numpy(_core.get().distances_to_center(_core_rows(center)[0], _core_rows(outputs), **args))
        except _core.CoreError:
            pass  # the reference raises the documented error
    return metric.distances(outputs, center)[:, 0]
