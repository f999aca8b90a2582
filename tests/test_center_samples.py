"""Center smoothing's three sample sets must be disjoint (docs/theory.md §2).

SMOOTH chooses the center ẑ and its radius r̂ from n selection samples, then checks it on n FRESH
samples: p = the fraction of the fresh samples within r̂ of ẑ. Reusing the selection samples for the
check makes it pass by construction (r̂ is the ⌈n/2⌉-th smallest distance of ẑ to those very samples,
so at least ⌈n/2⌉ of them lie within r̂). CERTIFY's m radius samples are fresh again.

Two kinds of test, neither of which assumes particular noise values (the CPU noise generator may change):
- a spy model that records every noisy input row it is fed, and recomputes ẑ, r̂, p and R̂ from them;
- a statistical one with f(z) = z in one dimension, where the mass of the ball [ẑ − r̂, ẑ + r̂] is
  known in closed form, so that n·p must be Binomial(n, mass) given the selection samples.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from smoothgen import CenterSmoother, stats


class SpyLinear:
    """f(z) = A z for a batch [b, d], recording a copy of every input row it sees, in call order.

    A plain callable (not a torch module): the smoother wraps it in its eager runtime. The sampler
    reuses one input buffer across batches, hence the copies.
    """

    def __init__(self, a: torch.Tensor):
        self.a = a.float()
        self.batches: list[torch.Tensor] = []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        rows = batch.reshape(batch.shape[0], -1)
        self.batches.append(rows.detach().clone())
        return rows @ self.a.T

    @property
    def rows(self) -> torch.Tensor:
        """Every row fed so far, [total, d]."""
        return torch.cat(self.batches) if self.batches else torch.empty(0, self.a.shape[1])

    def outputs(self, rows: torch.Tensor) -> torch.Tensor:
        return rows @ self.a.T


def _shared_rows(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many rows of `a` equal (exactly) some row of `b`."""
    if a.shape[0] == 0 or b.shape[0] == 0:
        return 0
    return int((torch.cdist(a.double(), b.double()) == 0).any(dim=1).sum())


def _assert_fresh_gaussian_copies(rows: torch.Tensor, x: torch.Tensor, sigma: float) -> None:
    """Rows look like x + σ·N(0, I): no two equal, noise mean ≈ 0 and std ≈ 1 (loose, property-level)."""
    noise = (rows.double() - x.double().reshape(1, -1)) / sigma
    assert int((torch.cdist(rows.double(), rows.double()) == 0).sum()) == rows.shape[0]  # only the diagonal
    assert abs(float(noise.mean())) < 0.15
    assert 0.85 < float(noise.std()) < 1.15


@pytest.fixture
def spy() -> SpyLinear:
    gen = torch.Generator().manual_seed(0)
    return SpyLinear(torch.randn(3, 4, generator=gen))


@pytest.mark.parametrize("n_candidates", [None, 25])
def test_smooth_checks_the_center_on_n_fresh_samples_disjoint_from_the_selection(spy: SpyLinear, n_candidates) -> None:
    """SMOOTH feeds exactly 2n noisy rows: the first n choose ẑ and r̂ (recomputed here from them), the
    last n are fresh (none equals a selection row) and are the ones p counts."""
    x = torch.tensor([0.4, -0.3, 0.2, 0.1])
    sigma, n = 0.5, 300
    smoother = CenterSmoother(spy, sigma, "l2", batch_size=128, n_candidates=n_candidates, input_shape=(4,))
    for seed in (0, 1, 2):
        spy.batches.clear()
        result = smoother.smooth(x, n=n, delta=0.2, seed=seed)
        rows = spy.rows
        assert rows.shape[0] == 2 * n, "SMOOTH must draw n selection and n fresh check samples"
        selection, check = rows[:n], rows[n:]
        # Disjoint: the check's samples are new noise, not the selection's again.
        shared = _shared_rows(check, selection)
        assert shared == 0, f"{shared} of the {n} check rows repeat selection rows"
        _assert_fresh_gaussian_copies(selection, x, sigma)
        _assert_fresh_gaussian_copies(check, x, sigma)

        # ẑ is one of the selection outputs, r̂ the median of their distances to it.
        sel_out = spy.outputs(selection)
        assert bool((torch.cdist(result.center[None].double(), sel_out.double()) < 1e-5).any())
        sel_dist = torch.linalg.norm(sel_out - result.center[None], dim=1).numpy()
        k = (n + 1) // 2
        assert result.center_radius == pytest.approx(float(np.sort(sel_dist)[k - 1]), rel=1e-5, abs=1e-6)

        # p is the fraction of the CHECK outputs within r̂ (up to float ties at the boundary).
        check_dist = torch.linalg.norm(spy.outputs(check) - result.center[None], dim=1).numpy()
        r = result.center_radius
        lo = float(np.sum(check_dist <= r * (1 - 1e-5) - 1e-6)) / n
        hi = float(np.sum(check_dist <= r * (1 + 1e-5) + 1e-6)) / n
        assert lo <= result.p <= hi, f"seed {seed}: p = {result.p} is not the check rows' fraction within r̂ ({lo}..{hi})"


def test_certify_draws_m_radius_samples_disjoint_from_both_smooth_sets(spy: SpyLinear) -> None:
    """CERTIFY = SMOOTH (2n rows) + m fresh radius rows + the one clean input for the smoothing error;
    the m rows share none with the 2n, and R̂ is the ⌈q·m⌉-th smallest of their distances to ẑ."""
    x = torch.tensor([0.4, -0.3, 0.2, 0.1])
    sigma, n, m, eps_in = 0.5, 200, 700, 0.2
    smoother = CenterSmoother(spy, sigma, "l2", batch_size=96, input_shape=(4,))
    cert = smoother.certify(x, eps_in, n=n, m=m, delta=0.3, seed=5)
    assert not cert.abstained, cert.reason
    rows = spy.rows
    assert rows.shape[0] == 2 * n + m + 1
    clean = (rows == x.reshape(1, -1)).all(dim=1)
    assert int(clean.sum()) == 1, "exactly one clean (noise-free) call, for the smoothing error"
    noisy = rows[~clean]
    selection, check, radius = noisy[:n], noisy[n : 2 * n], noisy[2 * n :]
    assert radius.shape[0] == m
    shared = (_shared_rows(check, selection), _shared_rows(radius, selection), _shared_rows(radius, check))
    assert shared == (0, 0, 0), f"rows shared (check/selection, radius/selection, radius/check): {shared}"
    _assert_fresh_gaussian_copies(radius, x, sigma)

    dist = torch.linalg.norm(spy.outputs(radius) - cert.center[None], dim=1).numpy()
    k = stats.order_statistic_index(cert.q, m)  # the certificate's own quantile level q
    assert cert.r_hat == pytest.approx(float(np.sort(dist)[k - 1]), rel=1e-5, abs=1e-6)


def test_smooth_p_is_binomial_in_the_ball_mass_not_at_least_one_half() -> None:
    """f(z) = z in 1-D, x + σε ~ N(x, σ²): given ẑ and r̂, a fresh check gives n·p ~ Binomial(n, μ) with
    μ = Φ((ẑ − x + r̂)/σ) − Φ((ẑ − x − r̂)/σ). The min-median ball overfits its own samples (μ < 1/2
    on average), so fresh checks often give p < ⌈n/2⌉/n, which reused selection samples never can.

    Over 60 seeds: (1) p < ⌈n/2⌉/n in at least 15 of them (about 45 expected; fewer than 15 has
    probability < 1e-8 under fresh samples); (2) Σ(n·p − n·μ)/sqrt(Σ n·μ(1 − μ)), which is ≈ N(0, 1)
    for fresh samples, lies within ±4.5 (reused samples give ≈ +8).
    """
    x0, sigma, n = 0.3, 1.0, 51
    k = (n + 1) // 2
    smoother = CenterSmoother(lambda z: z.reshape(z.shape[0], -1).clone(), sigma, "l2", input_shape=(1,))
    x = torch.tensor([x0])
    below, excess, variance = 0, 0.0, 0.0
    for seed in range(1000, 1060):
        result = smoother.smooth(x, n=n, delta=0.2, seed=seed)
        z_hat, r_hat = float(result.center[0]), result.center_radius
        mass = float(norm.cdf((z_hat - x0 + r_hat) / sigma) - norm.cdf((z_hat - x0 - r_hat) / sigma))
        assert 0.0 < mass < 1.0
        below += result.p < k / n
        excess += n * result.p - n * mass
        variance += n * mass * (1 - mass)
    score = excess / math.sqrt(variance)
    summary = f"p < ceil(n/2)/n in {below}/60 seeds; standardized excess of n·p over n·mass {score:.2f}"
    assert below >= 15, f"{summary}: the check looks like it reuses the selection samples"
    assert abs(score) < 4.5, f"{summary}: n·p is not Binomial(n, ball mass)"
