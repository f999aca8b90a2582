"""SmoothedLM and the text certificates (docs/theory.md §4a, §4c, §4d), and the bounds behind them."""
from __future__ import annotations

import json
import math
import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from scipy import integrate, optimize
from scipy.stats import norm

from smoothgen import generative, kernels, stats
from smoothgen.attacks import attack_certified_prefix, pgd_embedding_attack
from smoothgen.engine import Purpose, RandomStream
from smoothgen.errors import InvalidInputError, InvalidParameterError, ModelOutputError
from smoothgen.generative import (
    SmoothedLM,
    nearest_neighbor_distances,
    substitution_radius,
    substitutions_covered,
)
from tiny_models import tiny_code_lm

# --------------------------------------------------------------------------------------------------
# Test subjects
# --------------------------------------------------------------------------------------------------


@dataclass
class _Out:
    logits: torch.Tensor
    past_key_values: tuple


class LinearThresholdLM(torch.nn.Module):
    """A causal LM whose step-t choice is a steep threshold of a linear function of the prompt rows.

    At step t (position L − 1 + t) the logits are +k·s_t/2 for token A_t, −k·s_t/2 for token B_t and
    −1e4 for every other token, with s_t = <W_t, prompt embedding rows> − b_t. So p_{A_t} = sigmoid(k·s_t)
    and the smoothed p̄_{A_t}(x) = E sigmoid(k(m_t + σ‖W_t|mask‖·Z)) is a function of the margin m_t only:
    the smoothed decoder keeps A_t exactly while m_t > 0, and its robust radius at step t is
    m_t / ‖W_t restricted to the perturbed rows‖ — known in closed form, which makes the certificate's
    tightness (and any unsoundness) visible to an attack. The cache is the embeddings seen so far.
    """

    def __init__(self, table: torch.Tensor, weights: torch.Tensor, biases: torch.Tensor, a: list[int], b: list[int], k: float):
        super().__init__()
        self.emb = torch.nn.Embedding(*table.shape)
        with torch.no_grad():
            self.emb.weight.copy_(table)
        self.register_buffer("weights", weights)  # [T, L, D]
        self.register_buffer("biases", biases)  # [T]
        self.a, self.b, self.k = a, b, k
        self.prompt_length = weights.shape[1]
        self.context_length = self.prompt_length + weights.shape[0]

    def get_input_embeddings(self):
        return self.emb

    def forward(self, inputs_embeds, past_key_values=None, use_cache=True):
        past = past_key_values[0] if past_key_values else inputs_embeds[:, :0]
        full = torch.cat([past, inputs_embeds], dim=1)
        start, count = past.shape[1], inputs_embeds.shape[1]
        L, V = self.prompt_length, self.emb.weight.shape[0]
        logits = torch.zeros(full.shape[0], count, V, dtype=full.dtype)
        for j in range(count):
            t = start + j - (L - 1)
            if t < 0 or t >= self.weights.shape[0]:
                continue
            s = (full[:, :L] * self.weights[t]).sum(dim=(1, 2)) - self.biases[t]
            row = torch.full((full.shape[0], V), -1e4, dtype=full.dtype)
            row[:, self.a[t]] = self.k * s / 2
            row[:, self.b[t]] = -self.k * s / 2
            logits[:, j] = row
        return _Out(logits=logits, past_key_values=(full,))


def linear_lm(margins_in_sigma: list[float], sigma: float, mask: list[bool], seed: int = 0, k: float = 10.0):
    """A LinearThresholdLM, its prompt, and the exact p̄ / robust radius of each step."""
    gen = torch.Generator().manual_seed(seed)
    V, D, L, T = 6, 4, len(mask), len(margins_in_sigma)
    table = torch.randn(V, D, generator=gen)
    prompt = [1, 4, 2][:L]
    m = torch.tensor(mask)[:, None].float()
    weights = torch.randn(T, L, D, generator=gen)
    x = table[prompt]
    biases = []
    for t, r in enumerate(margins_in_sigma):
        wm = float((weights[t] * m).norm())
        biases.append(float((weights[t] * x).sum()) - r * sigma * wm)  # margin m_t = r·σ·‖W_t|mask‖
    a, b = [0, 3, 5, 1][:T], [2, 1, 0, 4][:T]
    model = LinearThresholdLM(table, weights, torch.tensor(biases), a, b, k).eval()

    def exact(delta: torch.Tensor | None = None) -> tuple[list[float], list[float]]:
        """(p̄ of A_t at x + delta, robust radius at x + delta) per step, by 1-D quadrature."""
        xp = x if delta is None else x + delta * m
        ps, radii = [], []
        for t in range(T):
            wm = float((weights[t] * m).norm())
            margin = float((weights[t] * xp).sum()) - biases[t]
            s = sigma * wm
            f = lambda z: float(1 / (1 + np.exp(-np.clip(k * (margin + s * z), -700, 700)))) * norm.pdf(z)
            ps.append(integrate.quad(f, -12, 12, points=[-margin / s], limit=200)[0])
            radii.append(margin / wm)
        return ps, radii

    return model, prompt, exact


class RecordingLM(torch.nn.Module):
    """Wraps an LM and records every inputs_embeds it is called with (to check what the model sees)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[torch.Tensor, bool]] = []
        self.context_length = inner.context_length

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, inputs_embeds, past_key_values=None, use_cache=True):
        self.calls.append((inputs_embeds.detach().clone(), past_key_values is not None))
        return self.inner(inputs_embeds=inputs_embeds, past_key_values=past_key_values, use_cache=use_cache)


class NaNLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)

    def get_input_embeddings(self):
        return self.emb

    def forward(self, inputs_embeds, past_key_values=None, use_cache=True):
        return _Out(logits=torch.full((*inputs_embeds.shape[:2], 10), math.nan), past_key_values=())


PROMPT = [72, 101, 108, 108, 111]  # "Hello"


def direct_probs(model, embeds: torch.Tensor) -> torch.Tensor:
    """softmax of the last position of every copy: one plain forward of the whole sequences (no cache, no chunks)."""
    with torch.no_grad():
        return torch.softmax(model(inputs_embeds=embeds).logits[:, -1].double(), -1)


# --------------------------------------------------------------------------------------------------
# p̄, caching, masking, randomness
# --------------------------------------------------------------------------------------------------


def test_next_token_distribution_is_the_average_softmax():
    model = tiny_code_lm()
    lm = SmoothedLM(model, 0.3, batch_size=7)
    p_bar = lm.next_token_distribution(PROMPT, 20, seed=5)
    key = RandomStream(5, 0).key(Purpose.PREDICT)
    embeds = kernels.noisy_embedding(torch.tensor([PROMPT]), model.get_input_embeddings().weight.detach(), 0.3, 20, None, seed=key.key)
    expected = direct_probs(model, embeds).mean(0)
    assert torch.allclose(p_bar, expected, atol=1e-6)
    assert abs(float(p_bar.sum()) - 1) < 1e-6
    # batch size does not change the copies
    assert torch.allclose(SmoothedLM(model, 0.3, batch_size=20).next_token_distribution(PROMPT, 20, seed=5), p_bar, atol=1e-7)
    # the noise matters: σ = 0.3 is not the clean distribution
    clean = direct_probs(model, model.get_input_embeddings().weight.detach()[PROMPT][None])[0]
    assert float((p_bar - clean).abs().max()) > 1e-3


@pytest.mark.parametrize("budget", [generative.LOGITS_BUDGET, 7 * 256 * 3])
def test_cached_decoding_equals_uncached(monkeypatch, budget):
    """KV-cached selection + teacher-forced estimation (in one call or in windows through the cache)
    gives the tokens and statistics of recomputing every copy's whole sequence at every step."""
    monkeypatch.setattr(generative, "LOGITS_BUDGET", budget)
    lm = SmoothedLM(tiny_code_lm(), 0.2, batch_size=7)
    cached = lm.generate(PROMPT, 8, n0=15, n=16, alpha=0.05, seed=3)
    uncached = lm.generate(PROMPT, 8, n0=15, n=16, alpha=0.05, seed=3, use_cache=False)
    assert cached.tokens == uncached.tokens
    assert len(set(cached.tokens)) > 1  # a non-trivial continuation
    np.testing.assert_allclose(cached.p_mean, uncached.p_mean, atol=2e-5)
    np.testing.assert_allclose(cached.p_selection, uncached.p_selection, atol=2e-5)
    np.testing.assert_allclose(cached.step_radius, uncached.step_radius, atol=1e-3)


def test_cached_decoding_never_recomputes_the_prompt():
    rec = RecordingLM(tiny_code_lm())
    lm = SmoothedLM(rec, 0.2, batch_size=10)
    lm.generate(PROMPT, 5, n0=20, n=10, alpha=0.05, seed=0)
    L = len(PROMPT)
    prefills = [e for e, cached in rec.calls if not cached]
    steps = [e for e, cached in rec.calls if cached]
    # 2 selection chunks prefilled once; 1 estimation chunk in one teacher-forced call (prompt + 4 tokens)
    assert [tuple(e.shape[:2]) for e in prefills] == [(10, L), (10, L), (10, L + 4)]
    assert len(steps) == 2 * 4 and all(e.shape[1] == 1 for e in steps)
    for e in steps:  # every copy of a chunk is fed the same clean token embedding
        assert torch.equal(e, e[:1].expand_as(e))


def test_masked_positions_stay_exactly_clean():
    inner = tiny_code_lm()
    rec = RecordingLM(inner)
    mask = [False, True, False, True, False]
    lm = SmoothedLM(rec, 0.5, mask=mask, batch_size=8)
    cert = lm.generate(PROMPT, 3, n0=8, n=8, alpha=0.1, seed=0)
    assert cert.mask == tuple(mask)
    table = inner.get_input_embeddings().weight.detach()
    clean = table[PROMPT]
    prefills = [e for e, cached in rec.calls if not cached]
    assert prefills
    for e in prefills:
        for pos, perturbed in enumerate(mask):
            if perturbed:
                assert not torch.equal(e[:, pos], clean[pos].expand_as(e[:, pos]))
            else:
                assert torch.equal(e[:, pos], clean[pos].expand_as(e[:, pos]))
    # a callable mask and a per-call mask give the same noise rows
    lm2 = SmoothedLM(inner, 0.5, mask=lambda length: [bool(i % 2) for i in range(length)], batch_size=8)
    assert lm2.generate(PROMPT, 3, n0=8, n=8, alpha=0.1, seed=0).to_dict() == cert.to_dict()


def test_same_seed_same_certificate_other_seed_differs():
    lm = SmoothedLM(tiny_code_lm(), 0.3, batch_size=6)
    a = lm.generate(PROMPT, 4, n0=10, n=12, alpha=0.01, seed=11, radius=0.01)
    b = lm.generate(PROMPT, 4, n0=10, n=12, alpha=0.01, seed=11, radius=0.01)
    assert a == b and a.to_dict() == b.to_dict()
    # batch-invariant: the noise of copy i is keyed by (seed, purpose, i) only
    c = SmoothedLM(lm.model, 0.3, batch_size=5).generate(PROMPT, 4, n0=10, n=12, alpha=0.01, seed=11, radius=0.01)
    assert c.tokens == a.tokens
    np.testing.assert_allclose(c.p_mean, a.p_mean, atol=1e-6)
    d = lm.generate(PROMPT, 4, n0=10, n=12, alpha=0.01, seed=12, radius=0.01)
    assert d.p_mean != a.p_mean
    e = lm.generate(PROMPT, 4, n0=10, n=12, alpha=0.01, seed=11, radius=0.01, request_id=1)
    assert e.p_mean != a.p_mean
    json.dumps(a.to_dict())  # JSON-serialisable


def test_selection_and_estimation_noise_are_disjoint():
    inner = tiny_code_lm()
    rec = RecordingLM(inner)
    lm = SmoothedLM(rec, 0.3, batch_size=50)
    lm.generate(PROMPT, 2, n0=50, n=50, alpha=0.1, seed=0)
    L = len(PROMPT)
    prefills = [e[:, :L] for e, cached in rec.calls if not cached]
    assert len(prefills) == 2
    table = inner.get_input_embeddings().weight.detach()
    noise_sel = (prefills[0] - table[PROMPT]).reshape(50, -1)
    noise_est = (prefills[1] - table[PROMPT]).reshape(50, -1)
    stream = RandomStream(0, 0)
    expected_sel = kernels.noisy_embedding(torch.tensor([PROMPT]), table, 0.3, 50, None, seed=stream.key(Purpose.SELECTION).key)
    expected_est = kernels.noisy_embedding(torch.tensor([PROMPT]), table, 0.3, 50, None, seed=stream.key(Purpose.ESTIMATION).key)
    assert torch.equal(prefills[0], expected_sel) and torch.equal(prefills[1], expected_est)
    # no estimation copy reuses a selection copy's noise, and the two sets are uncorrelated
    assert float(torch.cdist(noise_sel, noise_est).min()) > 0.1
    corr = np.corrcoef(noise_sel.flatten().numpy(), noise_est.flatten().numpy())[0, 1]
    assert abs(corr) < 0.05
    # the decoded tokens depend on the selection copies only
    a = lm.generate(PROMPT, 3, n0=20, n=10, alpha=0.1, seed=4)
    b = lm.generate(PROMPT, 3, n0=20, n=40, alpha=0.1, seed=4)
    assert a.tokens == b.tokens and a.p_selection == b.p_selection and a.p_mean != b.p_mean


# --------------------------------------------------------------------------------------------------
# The certificate's arithmetic
# --------------------------------------------------------------------------------------------------


def test_step_radius_matches_a_hand_computation():
    model = tiny_code_lm(seed=1)
    sigma, n, alpha, T = 0.1, 40, 0.01, 5
    lm = SmoothedLM(model, sigma, batch_size=16)
    cert = lm.generate(PROMPT, T, n0=30, n=n, alpha=alpha, seed=9)
    # the estimation copies, recomputed directly: full sequence, one copy at a time
    table = model.get_input_embeddings().weight.detach()
    key = RandomStream(9, 0).key(Purpose.ESTIMATION)
    noisy = kernels.noisy_embedding(torch.tensor([PROMPT]), table, sigma, n, None, seed=key.key)
    scores = np.zeros((n, T))
    for t in range(T):
        seq = torch.cat([noisy, table[list(cert.tokens[:t])][None].expand(n, -1, -1)], dim=1)
        scores[:, t] = direct_probs(model, seq)[:, cert.tokens[t]].numpy()
    a = alpha / T / 2  # Bonferroni over T steps, then over the two bounds
    for t in range(T):
        mean, var = scores[:, t].mean(), scores[:, t].var(ddof=1)
        hoeffding = mean - math.sqrt(math.log(1 / a) / (2 * n))
        bernstein = mean - math.sqrt(2 * var * math.log(2 / a) / n) - 7 * math.log(2 / a) / (3 * (n - 1))
        lower = max(0.0, hoeffding, bernstein)
        radius = sigma * norm.ppf(lower) if lower > 0.5 else 0.0
        assert cert.p_mean[t] == pytest.approx(mean, abs=1e-6)
        assert cert.p_lower[t] == pytest.approx(lower, abs=1e-6)
        assert cert.step_radius[t] == pytest.approx(radius, abs=1e-5)
        # (σ/2)(Φ⁻¹(L) − Φ⁻¹(U)) with U = 1 − L is σΦ⁻¹(L)
        assert stats.generation_step_radius(sigma, lower, 1 - lower) == pytest.approx(radius, abs=1e-12)
    assert cert.alpha_step == alpha / T
    assert max(cert.step_radius) > 0  # the test subject certifies something
    # the prefix: largest k with R_t > R for every t < k
    r = cert.step_radius
    for radius in [0.0, *r, 1e9]:
        k = 0
        while k < T and r[k] > radius:
            k += 1
        assert cert.prefix_at(radius) == k
    assert cert.prefix_radius(0) == math.inf
    assert cert.prefix_radius(2) == min(r[:2])


def test_prefix_at_stops_at_the_first_step_below_the_radius():
    """Non-monotone step radii (a hesitant step between two confident ones): the prefix certified at R is
    the steps before the first R_t ≤ R, never the number of steps with R_t > R."""
    lm = SmoothedLM(tiny_code_lm(), 0.3, batch_size=6)
    cert = lm.generate(PROMPT, 3, n0=6, n=6, alpha=0.1, seed=0)
    cert = dataclasses.replace(cert, step_radius=(0.5, 0.1, 0.5))
    assert [cert.prefix_at(r) for r in (0.0, 0.05, 0.1, 0.2, 0.5)] == [3, 3, 1, 1, 0]
    for radius in (0.0, 0.05, 0.1, 0.2, 0.49, 0.5, 1.0):  # the largest k with prefix_radius(k) > radius
        assert cert.prefix_at(radius) == max(k for k in range(4) if cert.prefix_radius(k) > radius)
    edit = {0: PROMPT[0] + 1}
    d = substitution_radius(lm.table, PROMPT, edit)
    cert = dataclasses.replace(cert, step_radius=(2 * d, d / 2, 2 * d))
    assert cert.prefix_under_substitutions(lm.table, edit) == 1


def test_generation_step_radius_formula():
    assert stats.generation_step_radius(0.5, 0.9, 0.05) == pytest.approx(0.25 * (norm.ppf(0.9) - norm.ppf(0.05)))
    assert stats.generation_step_radius(0.5, 0.4, 0.4) == 0.0
    assert stats.generation_step_radius(0.5, 0.3, 0.5) == 0.0
    with pytest.raises(InvalidParameterError):
        stats.generation_step_radius(0.0, 0.9, 0.1)


def test_bounded_mean_lower_bounds_cover_the_mean():
    """Empirical coverage of the one-sided bounds on [0, 1] data with a known mean; a point estimate fails."""
    rng = np.random.default_rng(0)
    alpha, n, reps = 0.1, 30, 3000
    for a_, b_ in [(9.0, 1.0), (0.3, 0.3), (50.0, 2.0)]:  # Beta laws: skewed, U-shaped, concentrated
        true = a_ / (a_ + b_)
        x = rng.beta(a_, b_, size=(reps, n))
        means, variances = x.mean(1), x.var(1, ddof=1)
        for method in stats.BOUNDED_MEAN_METHODS:
            lows = np.array([stats.bounded_mean_lower(m, v, n, alpha, method) for m, v in zip(means, variances)])
            assert np.mean(lows > true) <= alpha
        assert np.mean(means > true) > 0.3  # the point estimate is no bound
    # Bernstein beats Hoeffding for nearly constant scores, Hoeffding wins at maximal variance
    assert stats.empirical_bernstein_lower(0.99, 1e-5, 1000, 0.01) > stats.hoeffding_lower(0.99, 1000, 0.01)
    assert stats.empirical_bernstein_lower(0.5, 0.25, 1000, 0.01) < stats.hoeffding_lower(0.5, 1000, 0.01)
    assert stats.bounded_mean_lower(0.99, 1e-5, 1000, 0.01) == stats.empirical_bernstein_lower(0.99, 1e-5, 1000, 0.005)
    with pytest.raises(InvalidParameterError):
        stats.empirical_bernstein_radius(0.1, 1, 0.1)
    with pytest.raises(InvalidParameterError):
        stats.bounded_mean_lower(0.5, 0.1, 10, 0.1, "normal")


# --------------------------------------------------------------------------------------------------
# §4(a): sample-free bounds against exact total variation
# --------------------------------------------------------------------------------------------------


def _wasserstein(p, q, dist, order):
    """Exact W_order between two discrete laws on the same points, by linear programming."""
    k = len(p)
    cost = (dist**order).ravel()
    rows = [np.kron(np.eye(k)[i], np.ones(k)) for i in range(k)]
    cols = [np.kron(np.ones(k), np.eye(k)[j]) for j in range(k)]
    res = optimize.linprog(cost, A_eq=np.array(rows + cols), b_eq=np.concatenate([p, q]), bounds=(0, None), method="highs")
    return res.fun ** (1 / order)


def test_tv_bound_is_exact_for_the_threshold_generator():
    """G(x) = 1[x + ε > 0]: P_x(1) = Φ(x/σ); the TV for x' = −x is 2Φ(|x|/σ) − 1 = the bound at ‖Δ‖ = 2|x|."""
    sigma = 0.7
    for x in np.linspace(-2, 2, 21):
        for d in [0.0, 0.1, 0.5, 1.3, 4.0]:
            tv = abs(norm.cdf(x / sigma) - norm.cdf((x + d) / sigma))
            assert tv <= stats.tv_bound(d, sigma) + 1e-12
    for d in [0.1, 0.5, 1.3, 4.0]:
        tv = abs(norm.cdf(-d / 2 / sigma) - norm.cdf(d / 2 / sigma))
        assert tv == pytest.approx(stats.tv_bound(d, sigma), abs=1e-12)


def test_tv_wasserstein_and_event_bounds_hold_for_a_sign_pattern_generator():
    """G(x) = (sign(u1·z − c1), sign(u2·z − c2)), z = x + ε, u1 ⊥ u2: four outputs with exact probabilities."""
    sigma = 0.5
    rng = np.random.default_rng(1)
    theta = 0.3
    u = np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])
    c = np.array([0.2, -0.1])
    points = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], dtype=float)
    dist = np.linalg.norm(points[:, None] - points[None], axis=-1)
    diameter = dist.max()

    def law(x):
        q = norm.cdf((u @ x - c) / sigma)  # P(sign = +1) per coordinate, independent (u orthonormal)
        return np.array([q[0] * q[1], q[0] * (1 - q[1]), (1 - q[0]) * q[1], (1 - q[0]) * (1 - q[1])])

    worst = 0.0
    for _ in range(100):
        x = rng.normal(size=2)
        delta = rng.normal(size=2) * rng.uniform(0.01, 1.5)
        p, q = law(x), law(x + delta)
        r = float(np.linalg.norm(delta))
        tv = 0.5 * np.abs(p - q).sum()
        bound = stats.tv_bound(r, sigma)
        assert tv <= bound + 1e-12
        worst = max(worst, tv / bound)
        for order in (1, 2):
            assert _wasserstein(p, q, dist, order) <= stats.wasserstein_bound(r, sigma, diameter, order) + 1e-9
        for subset in range(1, 16):  # every event S
            chosen = [(subset >> i) & 1 for i in range(4)]
            ps, qs = min(1.0, float(np.dot(chosen, p))), min(1.0, float(np.dot(chosen, q)))
            assert qs >= stats.event_probability_bound(ps, r, sigma) - 1e-12
    assert worst > 0.5  # the bound is not vacuous on this generator


def test_distribution_bound_of_smoothed_lm():
    lm = SmoothedLM(tiny_code_lm(), 0.4)
    b = lm.distribution_bound(0.2, max_new_tokens=10)
    assert b.tv == pytest.approx(2 * norm.cdf(0.2 / 0.8) - 1)
    assert b.w1 == pytest.approx(10 * b.tv) and b.w2 == pytest.approx(10 * math.sqrt(b.tv))
    json.dumps(b.to_dict())


# --------------------------------------------------------------------------------------------------
# Soundness against an attack
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gaussian_votes_against_the_exact_vote_share_and_radius(seed):
    """score="vote" under Gaussian noise: on LinearThresholdLM a copy votes A_t exactly when its margin is
    positive, so the vote share is Φ(m_t / (σ‖W_t|mask‖)) and the vote-smoothed decoder's robust radius is
    m_t / ‖W_t|mask‖ — the same as for probabilities. The certified step radius σΦ⁻¹(L_t) must stay below
    it (and L_t below the share) at every step, and not be vacuous."""
    sigma, mask = 0.5, [True, True, False]
    model, prompt, exact = linear_lm([2.2, 1.7, 2.6], sigma, mask, seed=seed)
    lm = SmoothedLM(model, sigma, mask=mask, batch_size=500, score="vote")
    cert = lm.generate(prompt, 3, n0=50, n=2000, alpha=0.01, seed=seed)
    _, true_radius = exact()
    assert cert.tokens == (0, 3, 5) and cert.score == "vote" and cert.bound == "clopper-pearson"
    for t in range(3):
        share = norm.cdf(true_radius[t] / sigma)
        assert cert.p_lower[t] <= share
        assert 0.8 * true_radius[t] < cert.step_radius[t] <= true_radius[t]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_certified_prefix_survives_pgd_on_a_tight_model(seed):
    """On LinearThresholdLM the smoothed decoder's robust radius is known exactly and PGD reaches it, so
    a certificate that claimed more than it may (a point estimate instead of L_t, say) would be broken:
    at the certified radius the exact p̄ of every certified token must stay above 1/2, and the smoothed
    decoder (1000 fresh samples) must reproduce the prefix; just past the true radius PGD must win."""
    sigma, mask = 0.5, [True, True, False]
    model, prompt, exact = linear_lm([2.2, 1.7, 2.6], sigma, mask, seed=seed)
    lm = SmoothedLM(model, sigma, mask=mask, batch_size=500)
    cert = lm.generate(prompt, 3, n0=50, n=1000, alpha=0.01, seed=seed)
    p_true, true_radius = exact()
    assert cert.tokens == (0, 3, 5)
    assert all(l <= p for l, p in zip(cert.p_lower, p_true))
    r_cert = cert.prefix_radius(3)
    assert cert.prefix_at(r_cert * 0.999) == 3 and r_cert > 0.6 * min(true_radius)  # not vacuous
    r_attack = r_cert * 0.9999  # certified: R_t > r_attack for every step
    report = attack_certified_prefix(lm, cert, r_attack, n_eval=1000, iterations=30, eot_samples=16, seed=seed)
    assert report.prefix == 3 and not report.broken
    for attack in report.attacks:
        assert r_attack * 0.99 <= attack.norm <= r_attack * (1 + 1e-5)
        p_attacked, _ = exact(attack.delta)
        assert p_attacked[attack.step] > 0.5
        assert p_attacked[attack.step] < p_true[attack.step]  # the attack did push the probability down
    # the attack is strong: past the true radius of step 1 it flips that step
    beyond = true_radius[1] * 1.05
    attack = pgd_embedding_attack(model, prompt, cert.tokens, 1, beyond, sigma, mask=mask, iterations=30, eot_samples=16)
    assert exact(attack.delta)[0][1] < 0.5
    assert lm.decode(prompt, 3, 1000, seed=7, mask=mask, delta=attack.delta)[:2] != cert.tokens[:2]


def test_certified_prefix_survives_pgd_on_a_transformer():
    sigma = 0.15
    lm = SmoothedLM(tiny_code_lm(seed=1, scale=40), sigma, batch_size=100)
    cert = lm.generate(PROMPT, 3, n0=50, n=200, alpha=0.05, seed=0)
    k = cert.prefix_at(0.0)
    assert k >= 1
    r_cert = cert.prefix_radius(k)
    report = attack_certified_prefix(lm, cert, r_cert * 0.999, n_eval=300, iterations=15, eot_samples=16)
    assert report.prefix == k and not report.broken
    assert all(a.norm > 0.9 * r_cert * 0.999 for a in report.attacks)  # the attack used its budget


# --------------------------------------------------------------------------------------------------
# Threat-model translation
# --------------------------------------------------------------------------------------------------


def test_substitution_radius_and_coverage():
    table = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    ids = [0, 1, 2]
    assert substitution_radius(table, ids, {0: 1}) == pytest.approx(5.0)
    assert substitution_radius(table, ids, [(0, 3), (2, 0)]) == pytest.approx(math.sqrt(4 + 1))
    assert substitution_radius(table, ids, {}) == 0.0
    assert substitutions_covered(table, ids, {0: 3, 2: 0}, 2.3)
    assert not substitutions_covered(table, ids, {0: 3, 2: 0}, math.sqrt(5))  # strict
    assert not substitutions_covered(table, ids, {0: 3}, 10.0, mask=[False, True, True])
    nn = nearest_neighbor_distances(table, ids)
    assert nn.tolist() == pytest.approx([1.0, math.sqrt(9 + 4), 1.0])
    with pytest.raises(InvalidInputError):
        substitution_radius(table, ids, {5: 1})
    with pytest.raises(InvalidInputError):
        substitution_radius(table, ids, {0: 9})
    # through a certificate
    lm = SmoothedLM(tiny_code_lm(), 0.3)
    cert = lm.generate(PROMPT, 2, n0=10, n=20, alpha=0.1, seed=0)
    emb = lm.table
    assert cert.prefix_under_substitutions(emb, {}) == cert.prefix_at(0.0)
    far = {0: int(torch.cdist(emb[PROMPT[:1]], emb).argmax())}
    assert cert.prefix_under_substitutions(emb, far) == cert.prefix_at(substitution_radius(emb, PROMPT, far))


# --------------------------------------------------------------------------------------------------
# §4(d) center smoothing, one-noisy-copy samples
# --------------------------------------------------------------------------------------------------


def test_sample_is_base_greedy_decoding_of_one_noisy_copy():
    model = tiny_code_lm()
    lm = SmoothedLM(model, 0.3, batch_size=3)
    out = lm.sample(PROMPT, 4, 5, seed=2)
    key = RandomStream(2, 0).key(Purpose.PREDICT)
    table = model.get_input_embeddings().weight.detach()
    noisy = kernels.noisy_embedding(torch.tensor([PROMPT]), table, 0.3, 5, None, seed=key.key)
    for i in range(5):
        seq, toks = noisy[i : i + 1], []
        for _ in range(4):
            with torch.no_grad():
                toks.append(int(model(inputs_embeds=seq).logits[0, -1].argmax()))
            seq = torch.cat([seq, table[toks[-1]][None, None]], dim=1)
        assert out[i] == tuple(toks)
    assert len(set(out)) > 1


def test_center_certify_with_levenshtein():
    lm = SmoothedLM(tiny_code_lm(seed=1, scale=40), 0.002, batch_size=50)
    cert = lm.center_certify(PROMPT, 4, eps_in=0.0001, n=50, m=100, delta=0.3, seed=0)
    clean = lm.sample(PROMPT, 4, 1, seed=0)[0]  # σ = 0.002: every noisy copy decodes like the clean prompt
    assert cert.metric == "levenshtein" and not cert.abstained
    assert cert.center == clean and cert.eps_out == 0.0 and cert.smoothing_error == 0.0
    noisy = SmoothedLM(lm.model, 1.0, batch_size=50).center_certify(PROMPT, 4, eps_in=0.5, n=50, m=100, delta=0.3, seed=0)
    assert noisy.abstained or noisy.eps_out > 0
    assert isinstance(noisy.center, tuple) and len(noisy.center) == 4


# --------------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_specific_errors():
    model = tiny_code_lm(context_length=12)
    lm = SmoothedLM(model, 0.3)
    with pytest.raises(InvalidInputError, match="empty"):
        lm.generate([], 2, n0=2, n=2)
    with pytest.raises(InvalidInputError, match="context length"):
        lm.generate(PROMPT, 8, n0=2, n=2)
    with pytest.raises(InvalidInputError, match=r"\[0, 256\)"):
        lm.generate([1, 256], 2, n0=2, n=2)
    with pytest.raises(InvalidInputError):
        lm.generate([1.5, 2.0], 2, n0=2, n=2)
    with pytest.raises(InvalidInputError):
        lm.generate([-1, 2], 2, n0=2, n=2)
    for sigma in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(InvalidParameterError):
            SmoothedLM(model, sigma)
    for kwargs in ({"n": 0}, {"n0": -1}, {"alpha": 0.0}, {"alpha": 1.0}, {"alpha": math.nan}, {"radius": -1.0}):
        with pytest.raises(InvalidParameterError):
            lm.generate(PROMPT, 2, **{"n0": 2, "n": 2, **kwargs})
    with pytest.raises(InvalidParameterError):
        lm.generate(PROMPT, 0, n0=2, n=2)
    with pytest.raises(InvalidParameterError):
        lm.next_token_distribution(PROMPT, 0)
    with pytest.raises(InvalidInputError):
        lm.generate(PROMPT, 2, n0=2, n=2, mask=[True, False])
    with pytest.raises(InvalidParameterError, match="no position"):
        lm.generate(PROMPT, 2, n0=2, n=2, mask=[False] * len(PROMPT))
    with pytest.raises(InvalidParameterError):
        SmoothedLM(model, 0.3, batch_size=0)
    with pytest.raises(ModelOutputError, match="NaN"):
        SmoothedLM(NaNLM(), 0.3).generate([1, 2], 2, n0=2, n=2)
    with pytest.raises(ModelOutputError):
        SmoothedLM(NaNLM(), 0.3).next_token_distribution([1, 2], 2)
    with pytest.raises(InvalidInputError):
        SmoothedLM(torch.nn.Linear(2, 2), 0.3)
    assert lm.generate("Hi", 2, n0=2, n=2, seed=0).prompt == (72, 105)  # CodeLM's byte encoding


# --------------------------------------------------------------------------------------------------
# Hugging Face transformers
# --------------------------------------------------------------------------------------------------


def test_hugging_face_gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16, bos_token_id=None, eos_token_id=None
    )
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(10)
    lm = SmoothedLM(model, 0.1, batch_size=6)
    assert lm.context_length == 16
    ids = [3, 14, 15, 9, 26]
    cached = lm.generate(ids, 5, n0=10, n=12, alpha=0.05, seed=1)
    uncached = lm.generate(ids, 5, n0=10, n=12, alpha=0.05, seed=1, use_cache=False)
    assert cached.tokens == uncached.tokens
    np.testing.assert_allclose(cached.p_mean, uncached.p_mean, atol=2e-5)
    key = RandomStream(4, 0).key(Purpose.PREDICT)
    embeds = kernels.noisy_embedding(torch.tensor([ids]), model.get_input_embeddings().weight.detach(), 0.1, 8, None, seed=key.key)
    assert torch.allclose(lm.next_token_distribution(ids, 8, seed=4), direct_probs(model, embeds).mean(0), atol=1e-6)
    with pytest.raises(InvalidInputError, match="context length"):
        lm.generate(ids, 12, n0=2, n=2)


def test_hugging_face_gpt2_under_token_ablation():
    """Token ablation on a Hugging Face causal LM (any model that takes inputs_embeds): votes, the cached
    and recomputed decoders agree, and the exact decoder (every kept subset) reproduces the certified prefix."""
    transformers = pytest.importorskip("transformers")
    from smoothgen.generative import TokenAblation

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16, bos_token_id=None, eos_token_id=None
    )
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(10)
    lm = SmoothedLM(model, TokenAblation(2, 0), batch_size=50)
    assert lm.score == "vote"
    ids = [3, 14, 15, 9, 26, 5]
    cached = lm.generate(ids, 3, n0=50, n=400, alpha=0.05, seed=1)
    uncached = lm.generate(ids, 3, n0=50, n=400, alpha=0.05, seed=1, use_cache=False)
    assert cached.tokens == uncached.tokens and cached.p_mean == uncached.p_mean
    exact, _ = lm.exact_decode(ids, 3)
    k = cached.prefix_at(0)
    assert exact[:k] == cached.tokens[:k]
