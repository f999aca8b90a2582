"""Center smoothing under token deletion (docs/theory.md §2 with §4j): p = 1/2 + Δ + Δ_r, Δ_r = 1 − p_del^r.

The exact oracle: every deletion pattern of a short run with its probability gives the smoothed law at a
prompt exactly, so the exact min-median center at every prompt whose run is within r inserted, deleted or
substituted tokens is known, and a certified center farther than ε_out from it is a failure of the
certificate (probability ≤ α) or a bug, never Monte Carlo noise.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from smoothgen import stats
from smoothgen.deletion import DELETED, TokenDeletion, deletion_delta
from smoothgen.encoders import SmoothedEncoder
from smoothgen.errors import InvalidInputError, InvalidParameterError
from smoothgen.generative import PromptNoise, SmoothedLM
from smoothgen.metrics import get_metric
from test_ablation import BagLM
from test_deletion import single_edits
from test_encoders import HOT, MASK, PLAIN, WEAK, ThreePointEncoder

COSINE = get_metric("cosine")
LEVENSHTEIN = get_metric("levenshtein")


def _run_mask(length: int) -> list[bool]:
    """A fixed head and tail of one token each around the run (the same at every length)."""
    return [0 < i < length - 1 for i in range(length)]


def _exact_law(noise: PromptNoise, ids: list[int], base) -> tuple[list, np.ndarray]:
    """The base model's output on every deletion pattern of the run, and each pattern's probability."""
    kept, weights = noise.space.all_patterns(noise.perturbed, 1 << 14)
    positions = torch.nonzero(noise.mask)[:, 0]
    marked = torch.tensor(ids)[None].repeat(kept.shape[0], 1)
    marked[:, positions] = torch.where(torch.from_numpy(kept), marked[:, positions], torch.tensor(DELETED))
    with torch.no_grad():
        return noise.base(base)(marked), weights


def _exact_centers(points: list, weights: np.ndarray, distances) -> tuple[list, float]:
    """The min-median centers of a weighted discrete law: every support point whose weighted median
    distance (the smallest t with P(d ≤ t) ≥ 1/2) is minimal (up to 1e-9), and that median."""
    d = distances(points)  # [S, S] float64
    medians = []
    for row in d:
        order = np.argsort(row, kind="stable")
        cumulative = np.cumsum(weights[order])
        medians.append(row[order][np.searchsorted(cumulative, 0.5 - 1e-12)])
    medians = np.array(medians)
    best = float(medians.min())
    return [points[i] for i in np.nonzero(medians <= best + 1e-9)[0]], best


def _edited_runs(run: list[int], alphabet: range, r: int) -> list[list[int]]:
    """Every run within r single edits (insertions, deletions, substitutions) of `run`, run itself excluded."""
    seen, frontier = {tuple(run)}, [run]
    for _ in range(r):
        frontier = [e for f in frontier for e in single_edits(f, alphabet) if tuple(e) not in seen and not seen.add(tuple(e))]
    return [list(e) for e in seen if list(e) != run]


# --------------------------------------------------------------------------------------------------
# The encoder: a toy whose law is a function of its run's HOT and WEAK counts
# --------------------------------------------------------------------------------------------------

HEAD, TAIL = [PLAIN], [PLAIN]
RUN = [WEAK] + [PLAIN] * 5  # P = 6: P(A') = 1 − p, P(A) = p


def _encoder(p: float) -> SmoothedEncoder:
    return SmoothedEncoder(ThreePointEncoder(), TokenDeletion(p), pooling="cls", batch_size=500)


def _cosines(points) -> np.ndarray:
    stacked = torch.stack(list(points))
    return COSINE.distances(stacked, stacked).double().numpy()


def _worst_encoder_violation(enc: SmoothedEncoder, cert, r: int) -> float:
    """max over runs within r edits of RUN (vocabulary PLAIN, WEAK, HOT, MASK) and over their exact centers
    z' of d(ẑ, z') − ε_out; and the DKW event at x checked exactly. The toy's law depends on the run's
    numbers of HOT and WEAK tokens only (its closed form, `test_encoders`), so one run per count pair is
    decoded exactly."""
    ids = HEAD + RUN + TAIL
    noise, _ = enc.noise_for(ids, _run_mask)
    outputs, weights = _exact_law(noise, ids, enc._encode)
    inside = float(weights[(COSINE.distances(outputs, cert.center[None])[:, 0] <= cert.r_hat).numpy()].sum())
    assert inside >= cert.p - 1e-12, "P_x(B(ẑ, R̂)) < p: the DKW event failed (probability ≤ α2) or R̂ is wrong"
    by_counts = {}
    for run in _edited_runs(RUN, range(4), r):
        by_counts.setdefault((run.count(HOT), run.count(WEAK), len(run) == 0), run)
    worst = -math.inf
    for run in by_counts.values():
        edited = HEAD + run + TAIL
        noise, _ = enc.noise_for(edited, _run_mask)
        outputs, weights = _exact_law(noise, edited, enc._encode)
        centers, _ = _exact_centers(list(outputs), weights, _cosines)
        worst = max(worst, max(float(COSINE.distances(c[None], cert.center[None])[0, 0]) for c in centers) - cert.eps_out)
    return worst


def test_the_toy_law_under_deletion_is_its_closed_form():
    """h HOT and w WEAK tokens in the run: P(B) = 1 − p^h, P(A) = p^(h+w), P(A') = the rest."""
    p = 0.8
    enc = _encoder(p)
    for run in (RUN, [HOT, WEAK, PLAIN, WEAK], [PLAIN, PLAIN], [MASK, HOT, HOT]):
        ids = HEAD + run + TAIL
        noise, _ = enc.noise_for(ids, _run_mask)
        outputs, weights = _exact_law(noise, ids, enc._encode)
        h, w = run.count(HOT), run.count(WEAK)
        assert weights.sum() == pytest.approx(1.0)
        assert weights[(outputs[:, 1] == 1).numpy()].sum() == pytest.approx(1 - p**h)
        assert weights[(outputs[:, 0] == 1).numpy()].sum() == pytest.approx(p ** (h + w))


@pytest.mark.parametrize(("p", "r"), [(0.7, 1), (0.8, 2), (0.9, 3)])
def test_encoder_certificate_against_exact_centers_of_every_edited_run(p, r):
    """Every run within r inserted, deleted or substituted tokens of RUN (one WEAK token): the exact center
    within ε_out. P_x(A) = p, P_x(A') = 1 − p.

    At (0.7, 1): q = 1/2 + Δ + Δ_1 + slack = 0.55 + 0.3 + 0.04 > 0.7, so R̂ = d(A, A') and ε_out = 10·d(A, A')
    ≈ 0.15: a real claim (B, at distance ≈ 1, is never reachable), and a needed one — one inserted WEAK
    token makes A' the exact center (P(A') = 1 − 0.7² = 0.51). At (0.8, 2) likewise (q ≈ 0.95 > 0.8). At
    (0.9, 3): q ≈ 0.86 < 0.9, R̂ = 0 and ε_out = 0, rightly: three edits bring A' to 1 − 0.9⁴ = 0.34 at most."""
    enc = _encoder(p)
    cert = enc.center_certify(HEAD + RUN + TAIL, edits=r, n=2000, m=2000, seed=0, mask=_run_mask)
    assert not cert.abstained and cert.sigma is None and cert.eps_in == r
    assert cert.p == pytest.approx(0.55 + float(deletion_delta(p, r)))
    assert _worst_encoder_violation(enc, cert, r) <= 1e-6
    assert cert.eps_out < 0.2 and (cert.eps_out == 0) == (p == 0.9)


def test_the_encoder_oracle_catches_a_level_without_delta_r(monkeypatch):
    """Sabotage: p = 1/2 + Δ (Δ_r dropped). At p_del = 0.7, R̂ = 0 (A holds 0.7 > q ≈ 0.59) and ε_out = 0,
    yet one inserted WEAK token moves the exact center to A'. The oracle above must see it."""
    honest = stats.center_ablation_level
    monkeypatch.setattr(stats, "center_ablation_level", lambda delta, delta_r: honest(delta, 0))
    enc = _encoder(0.7)
    cert = enc.center_certify(HEAD + RUN + TAIL, edits=1, n=2000, m=2000, seed=0, mask=_run_mask)
    assert not cert.abstained and cert.eps_out == 0.0
    assert _worst_encoder_violation(enc, cert, 1) > 0.01


def test_encoder_deletion_copies_are_reproducible_and_grouped_in_order():
    """`samples` draws the same copies whatever the batch size, each the encoder on its own closed-up copy."""
    enc = _encoder(0.5)
    ids = HEAD + [WEAK, HOT, PLAIN, WEAK] + TAIL
    a = enc.samples(ids, 300, seed=4, mask=_run_mask)
    enc.batch_size = 7
    b = enc.samples(ids, 300, seed=4, mask=_run_mask)
    assert torch.equal(a, b)
    noise, _ = enc.noise_for(ids, _run_mask)
    from smoothgen.engine import Purpose, RandomStream

    marked = noise.copies(torch.tensor(ids), RandomStream(4, 0).key(Purpose.PREDICT), 0, 300)
    for row, out in zip(marked, a):
        copy = row[row != DELETED]
        assert torch.equal(out, enc._encode(enc.table[copy][None])[0])


# --------------------------------------------------------------------------------------------------
# The LM: generated sequences under the Levenshtein metric, every single edit decoded exactly
# --------------------------------------------------------------------------------------------------


def _levenshteins(points) -> np.ndarray:
    return LEVENSHTEIN.distances(list(points), list(points)).double().numpy()


@pytest.mark.parametrize("seed", [1, 2])
def test_lm_certificate_against_exact_centers_of_every_single_edit(seed):
    """A small random LM (BagLM), 3 generated tokens, p = 0.9: the certificate says ε_out = 0 (R̂ = 0: the
    center's own generation holds q ≈ 0.74 of the mass), i.e. no single inserted, deleted or substituted
    token of the run changes the smoothed generation at all. Checked at every such run: the exact
    min-median center of its 2^P weighted greedy generations is ẑ itself."""
    p = 0.9
    lm = SmoothedLM(BagLM(seed=seed), TokenDeletion(p), batch_size=256)
    head, run, tail = [1], [2, 3, 4, 5], [6]
    ids = head + run + tail
    cert = lm.center_certify(ids, 3, eps_in=1, n=1500, m=3000, delta=0.1, seed=seed, mask=_run_mask)
    assert cert.metric == "levenshtein" and cert.eps_in == 1 and not cert.abstained
    assert cert.p == pytest.approx(0.6 + float(deletion_delta(p, 1)))
    assert cert.eps_out == 0.0
    greedy = lambda embeds: lm._greedy(embeds, 3)  # noqa: E731
    noise = PromptNoise(lm.noise, lm.table, torch.tensor(_run_mask(len(ids))))
    outputs, weights = _exact_law(noise, ids, greedy)
    inside = sum(w for out, w in zip(outputs, weights) if LEVENSHTEIN.distances([out], [cert.center])[0, 0] <= cert.r_hat)
    assert inside >= cert.p - 1e-12
    checked = 0
    for edited_run in single_edits(run, range(lm.vocab_size)):
        edited = head + edited_run + tail
        noise = PromptNoise(lm.noise, lm.table, torch.tensor(_run_mask(len(edited))))
        outputs, weights = _exact_law(noise, edited, greedy)
        centers, _ = _exact_centers(outputs, weights, _levenshteins)
        for center in centers:
            assert LEVENSHTEIN.distances([center], [cert.center])[0, 0] <= cert.eps_out
        checked += 1
    assert checked > 50


def test_lm_center_under_deletion_is_reproducible_and_its_center_a_generation():
    lm = SmoothedLM(BagLM(seed=1), TokenDeletion(0.5), batch_size=64)
    ids = [1, 2, 3, 4, 5, 6]
    a = lm.center_certify(ids, 3, eps_in=1, n=300, m=600, delta=0.1, seed=9, mask=_run_mask)
    b = lm.center_certify(ids, 3, eps_in=1, n=300, m=600, delta=0.1, seed=9, mask=_run_mask)
    assert a == b and isinstance(a.center, tuple) and len(a.center) == 3
    noise = PromptNoise(lm.noise, lm.table, torch.tensor(_run_mask(len(ids))))
    outputs, _ = _exact_law(noise, ids, lambda embeds: lm._greedy(embeds, 3))
    assert a.center in set(outputs)  # ẑ is one of the generations (a selection sample)


def test_what_center_smoothing_under_deletion_refuses():
    lm = SmoothedLM(BagLM(), TokenDeletion(0.5))
    with pytest.raises(InvalidParameterError, match="one contiguous run"):
        lm.center_certify([1, 2, 3, 4], 2, eps_in=1, mask=[True, False, True, False])
    with pytest.raises(InvalidParameterError, match="empty_token_id"):
        lm.center_certify([1, 2, 3], 2, eps_in=1)
    for bad in (0.5, -1, True):
        with pytest.raises(InvalidParameterError, match="inserted, deleted or substituted"):
            lm.center_certify([1, 2, 3], 2, eps_in=bad, mask=[True, True, False])
    enc = _encoder(0.8)
    with pytest.raises(InvalidParameterError, match="token deletion give edits"):
        enc.center_certify(HEAD + RUN + TAIL, eps_in=0.1, mask=_run_mask)
    with pytest.raises(InvalidInputError):
        TokenDeletion(0.5).run_grouped([[1, 2]], lambda ids: ids)
