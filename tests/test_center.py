"""CenterSmoother against analytic oracles (docs/theory.md §2)."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from smoothgen import CenterSmoother
from smoothgen import stats
from smoothgen.center import median_distances, min_median_center
from smoothgen.engine import Purpose, RandomStream, Sampler
from smoothgen.errors import InvalidInputError, InvalidParameterError, MetricError, ModelOutputError
from smoothgen.metrics import get_metric, register_metric

from oracles import Linear


@pytest.mark.parametrize("n_candidates", [None, 30])
def test_linear_oracle_smoothed_outputs_move_at_most_eps_out(n_candidates):
    """f(x) = A x with ℓ2 outputs: the smoothed outputs at x and x + ε_in·v (v the top right singular
    vector) stay within ε_out, and ε_out is within a small factor of the true ‖A‖₂·ε_in."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(2, 5, generator=gen)
    model = Linear(a)
    _, s, vh = torch.linalg.svd(a)
    x = torch.randn(5, generator=gen)
    sigma, eps_in = 0.25, 0.5
    smoother = CenterSmoother(model, sigma, "l2", n_candidates=n_candidates, input_shape=(5,))
    cert = smoother.certify(x, eps_in, n=10_000, m=20_000, seed=1)
    assert not cert.abstained, cert.reason
    true_change = float(s[0]) * eps_in
    assert true_change <= cert.eps_out <= 8 * true_change
    for seed in range(3):
        moved = smoother.smooth(x + eps_in * vh[0], n=10_000, seed=100 + seed)
        assert not moved.abstained
        assert float(torch.linalg.norm(moved.center - cert.center)) <= cert.eps_out
    assert cert.smoothing_error == pytest.approx(float(torch.linalg.norm(cert.center - a @ x)), rel=1e-5)


class Step(torch.nn.Module):
    """f(x) = 1[x_0 > 0] as a one-element output: its smoothed center jumps from 1 to 0 when the mass
    of ones crosses one half, so a certificate that is too small is caught."""

    def forward(self, x):
        return (x[:, :1] > 0).float()


def test_step_oracle_center_flip_is_covered():
    sigma, eps_in = 0.5, 0.5
    x = torch.tensor([sigma * norm.ppf(0.7), 0.0])  # P(f = 1) = 0.7 at x
    x_moved = x - torch.tensor([eps_in, 0.0])  # P(f = 1) = Φ(-0.476) ≈ 0.32: the center becomes 0
    smoother = CenterSmoother(Step(), sigma, "l2")
    cert = smoother.certify(x, eps_in, n=2000, m=20_000, seed=0)
    moved = smoother.smooth(x_moved, n=2000, seed=1)
    assert float(cert.center) == 1.0 and float(moved.center) == 0.0
    assert not cert.abstained
    assert float(torch.abs(cert.center - moved.center)) <= cert.eps_out
    # R̂ is 1: the ⌈q·m⌉-th distance lands among the 30 % of samples at distance 1.
    assert cert.r_hat == 1.0 and cert.eps_out == 3.0


def test_eps_out_is_gamma_one_plus_beta_times_the_order_statistic():
    """White box: R̂ equals the ⌈q·m⌉-th smallest distance of the m radius samples, recomputed here."""
    model = Linear(torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 2.0]]))
    x = torch.tensor([0.3, -0.2, 0.1])
    sigma, eps_in, m, alpha2 = 0.2, 0.3, 5000, 0.01
    for metric in ("l2", "cosine"):
        smoother = CenterSmoother(model, sigma, metric, batch_size=777)
        cert = smoother.certify(x, eps_in, n=1000, m=m, delta=0.2, alpha2=alpha2, seed=3)
        assert not cert.abstained
        gamma = get_metric(metric).gamma
        center = cert.center[None]
        key = RandomStream(3, 0).key(Purpose.CENTER_RADIUS)
        distances = Sampler(777).outputs(model, x, m, sigma, key, reduce=lambda o: get_metric(metric).distances(o, center)[:, 0])
        p = norm.cdf(norm.ppf(0.5 + 0.2) + eps_in / sigma)
        q = p + math.sqrt(math.log(1 / alpha2) / (2 * m))
        k = math.ceil(q * m)
        expected = np.sort(distances.numpy())[k - 1]
        assert cert.r_hat == expected
        assert cert.eps_out == pytest.approx(gamma * (1 + 2 * gamma) * expected)
        assert cert.q == pytest.approx(q) and cert.beta == 2 * gamma


def test_min_median_center_matches_brute_force():
    gen = torch.Generator().manual_seed(4)
    samples = torch.randn(101, 3, generator=gen)
    metric = get_metric("l1")
    center, radius = min_median_center(samples, metric)
    d = torch.cdist(samples.double(), samples.double(), p=1).numpy()
    medians = np.sort(d, axis=1)[:, 50]  # the 51st smallest of 101 = the median order statistic
    assert radius == pytest.approx(medians.min(), rel=1e-5)
    assert torch.equal(center[0], samples[int(np.argmin(medians))])
    # Row blocking gives the same medians as one block.
    import smoothgen.center as center_module

    old = center_module._ROW_BLOCK_ENTRIES
    center_module._ROW_BLOCK_ENTRIES = 7 * 101
    try:
        blocked = median_distances(samples, samples, metric)
    finally:
        center_module._ROW_BLOCK_ENTRIES = old
    assert torch.allclose(blocked.double(), torch.from_numpy(medians), rtol=1e-5)


def test_abstains_when_samples_too_few_or_radius_too_large():
    model = Linear(torch.eye(2))
    smoother = CenterSmoother(model, 0.5, "l2")
    few = smoother.certify(torch.zeros(2), 0.5, n=100, m=1000, seed=0)  # Δ1 = 0.17 > Δ
    assert few.abstained and few.reason == "center check failed" and few.eps_out == math.inf
    far = smoother.certify(torch.zeros(2), 2.5, n=2000, m=1000, seed=0)  # ε_in/σ = 5: q > 1
    assert far.abstained and far.reason == "q > 1" and far.q > 1


def test_same_seed_same_certificate():
    smoother = CenterSmoother(Linear(torch.eye(3)), 0.3, "l2", batch_size=100)
    a = smoother.certify(torch.ones(3), 0.3, n=500, m=2000, delta=0.2, seed=9)
    b = smoother.certify(torch.ones(3), 0.3, n=500, m=2000, delta=0.2, seed=9)
    c = smoother.certify(torch.ones(3), 0.3, n=500, m=2000, delta=0.2, seed=10)
    assert not a.abstained
    assert a.to_record() == b.to_record() and torch.equal(a.center, b.center)
    assert a.r_hat != c.r_hat


class ToTokens(torch.nn.Module):
    """A toy 'generator' whose outputs are token sequences of varying length."""

    def forward(self, x):
        return [[int(v > 0) for v in row] + [7] * int(row.sum() > 0) for row in x]


def test_sequence_outputs_with_levenshtein():
    smoother = CenterSmoother(ToTokens(), 0.2, "levenshtein")
    cert = smoother.certify(torch.tensor([1.0, 1.0, -1.0, 1.0]), 0.2, n=500, m=2000, delta=0.2, seed=0)
    assert not cert.abstained
    assert cert.center == [1, 1, 0, 1, 7]
    assert cert.smoothing_error == 0.0
    assert cert.eps_out == 3 * cert.r_hat


def test_digits_autoencoder_under_total_variation():
    from smoothgen.models import load_autoencoder, load_digits_split

    x = torch.from_numpy(load_digits_split().x_test[0])
    cert = CenterSmoother(load_autoencoder(), 0.1, "tv2d", n_candidates=30).certify(x, 0.2, n=10_000, m=20_000, seed=0)
    assert not cert.abstained
    assert 0 < cert.eps_out < 64  # TV of a difference of [0,1] images with 8x8 pixels is at most 112
    assert cert.smoothing_error < cert.eps_out


def test_negative_metric_is_an_error_not_a_certificate():
    name = "test-negative-metric"
    register_metric(name, lambda a, b: -1.0, gamma=1.0, overwrite=True)
    with pytest.raises(MetricError):
        CenterSmoother(Linear(torch.eye(2)), 0.5, name).certify(torch.zeros(2), 0.5, n=20, m=20, seed=0)


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.certify(torch.zeros(2), -0.1, n=10, m=10),
        lambda s: s.certify(torch.zeros(2), 0.1, n=0, m=10),
        lambda s: s.certify(torch.zeros(2), 0.1, n=10, m=0),
        lambda s: s.certify(torch.zeros(2), 0.1, n=10, m=10, delta=0.5),
        lambda s: s.certify(torch.zeros(2), 0.1, n=10, m=10, alpha1=0.0),
        lambda s: s.certify(torch.zeros(2), 0.1, n=10, m=10, alpha2=1.5),
        lambda s: s.smooth(torch.zeros(2), n=10, delta=0.0),
    ],
)
def test_bad_parameters(call):
    with pytest.raises(InvalidParameterError):
        call(CenterSmoother(Linear(torch.eye(2)), 0.5, "l2"))


def test_bad_construction_and_inputs():
    with pytest.raises(InvalidParameterError):
        CenterSmoother(Linear(torch.eye(2)), 0.0, "l2")
    with pytest.raises(InvalidParameterError):
        CenterSmoother(Linear(torch.eye(2)), 0.5, "no-such-metric")
    smoother = CenterSmoother(Linear(torch.eye(2)), 0.5, "l2", input_shape=(2,))
    with pytest.raises(InvalidInputError):
        smoother.certify(torch.tensor([float("nan"), 0.0]), 0.1, n=10, m=10)
    with pytest.raises(InvalidInputError):
        smoother.certify(torch.zeros(3), 0.1, n=10, m=10)


@pytest.mark.parametrize(
    "forward",
    [
        lambda x: torch.full((x.shape[0], 2), float("inf")),
        lambda x: torch.zeros(x.shape[0] - 1, 2) if x.shape[0] > 1 else torch.zeros(2, 2),
        lambda x: "garbage",
    ],
)
def test_garbage_model_outputs(forward):
    with pytest.raises(ModelOutputError):
        CenterSmoother(forward, 0.5, "l2").certify(torch.zeros(2), 0.1, n=10, m=10, seed=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the fused Triton center selection)")
@pytest.mark.parametrize("metric", ["l2", "l1", "cosine"])
@pytest.mark.parametrize("n_candidates", [None, 30])
def test_cuda_center_selection_matches_the_reference(metric, n_candidates):
    gen = torch.Generator().manual_seed(0)
    samples = torch.randn(1023, 65, generator=gen) + 3.0
    center_cpu, radius_cpu = min_median_center(samples, get_metric(metric), n_candidates)
    center_gpu, radius_gpu = min_median_center(samples.cuda(), get_metric(metric), n_candidates)
    assert torch.equal(center_gpu.cpu(), center_cpu)
    assert radius_gpu == pytest.approx(radius_cpu, rel=1e-4)
    smoother = CenterSmoother(Linear(torch.eye(65)).cuda(), 0.25, metric, n_candidates=n_candidates)
    cert = smoother.certify(torch.zeros(65, device="cuda"), 0.5, n=10_000, m=20_000, seed=0)
    assert not cert.abstained and cert.center.is_cuda


def test_certify_radii_is_certify_at_each_radius():
    """One sampling run certifies a whole curve ε_in ↦ ε_out: each certificate is the one `certify` gives at
    its radius with the same seed (and the DKW bound holds at every level at once, docs/theory.md §2)."""
    gen = torch.Generator().manual_seed(0)
    model = Linear(torch.randn(3, 6, generator=gen))
    x = torch.randn(6, generator=gen)
    smoother = CenterSmoother(model, 0.25, "l2", n_candidates=30, input_shape=(6,))
    radii = [0.0, 0.1, 0.25, 0.5, 2.0]  # 2.0: q > 1 at m = 4000, an abstention in the curve
    curve = smoother.certify_radii(x, radii, n=1000, m=4000, seed=3)
    assert [c.eps_in for c in curve] == radii
    for eps, cert in zip(radii, curve):
        one = smoother.certify(x, eps, n=1000, m=4000, seed=3)
        assert cert.to_record() == one.to_record()
    assert curve[-1].abstained and curve[-1].reason == "q > 1"
    eps_out = [c.eps_out for c in curve[:-1]]
    assert eps_out == sorted(eps_out)  # a larger threat reads a higher order statistic
    with pytest.raises(InvalidParameterError):
        smoother.certify_radii(x, [], n=100, m=100)
    with pytest.raises(InvalidParameterError):
        smoother.certify_radii(x, [0.1, -1.0], n=100, m=100)
    with pytest.raises(InvalidParameterError):
        smoother.certify_radii(x, 0.1, n=100, m=100)
