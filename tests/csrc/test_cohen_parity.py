"""Cohen et al.'s decisions from class counts in the C++ core against the Python reference on the same
counts: smoothgen.classify's steps (docs/theory.md §1) with smoothgen.stats computed by SciPy."""
import numpy as np
import pytest

from smoothgen import ABSTAIN, _core, stats

pytestmark = pytest.mark.skipif(not _core.HAVE_CORE, reason=f"C++ core not built: {_core.REASON}")
C = _core._C


def reference_certify(selection, estimation, sigma, alpha):
    """CERTIFY on counts, as SmoothedClassifier.certify decides: ĉA = argmax of the selection counts (first
    on ties), nA = its estimation count, pA_lower = Clopper–Pearson, abstain unless pA_lower > 1/2."""
    with _core.disabled():
        c_hat = int(np.argmax(selection))
        n_a, n = int(estimation[c_hat]), int(estimation.sum())
        p_lower = stats.clopper_pearson_lower(n_a, n, alpha)
        if p_lower <= 0.5:
            return ABSTAIN, 0.0, p_lower, n_a, c_hat, n
        return c_hat, stats.cohen_radius(sigma, p_lower), p_lower, n_a, c_hat, n


def reference_predict(counts, alpha):
    """PREDICT on counts, as SmoothedClassifier.predict decides (reversed stable argsort for the top two)."""
    with _core.disabled():
        top_two = np.argsort(counts, kind="stable")[::-1][:2]
        n_a, n_b = int(counts[top_two[0]]), int(counts[top_two[1]])
        pvalue = stats.binomial_test_pvalue(n_a, n_a + n_b, 0.5)
        return (int(top_two[0]) if pvalue <= alpha else ABSTAIN), pvalue, n_a, n_b


def random_counts(rng, num_classes, n, concentrated):
    p = rng.dirichlet(np.full(num_classes, 0.05 if concentrated else 1.0))
    return rng.multinomial(n, p).astype(np.int64)


def test_certify_matches_the_reference():
    rng = np.random.default_rng(0)
    for trial in range(400):
        classes = int(rng.integers(2, 12))
        n0, n = int(rng.integers(1, 200)), int(rng.choice([100, 1000, 10_000, 100_000]))
        sigma, alpha = float(rng.choice([0.12, 0.25, 0.5, 1.0])), float(rng.choice([0.001, 0.01, 0.05]))
        selection = random_counts(rng, classes, n0, trial % 2 == 0)
        if trial % 7 == 0:
            selection[:] = selection.max()  # ties: np.argmax takes the first
        estimation = random_counts(rng, classes, n, trial % 3 != 0)
        want = reference_certify(selection, estimation, sigma, alpha)
        got = C.cohen_certify(selection, estimation, sigma, alpha)
        assert (got[0], got[3], got[4], got[5]) == (want[0], want[3], want[4], want[5])
        assert got[1] == pytest.approx(want[1], rel=1e-12, abs=1e-300)
        assert got[2] == pytest.approx(want[2], rel=1e-12, abs=1e-300)


def test_predict_matches_the_reference():
    rng = np.random.default_rng(1)
    for trial in range(400):
        classes = int(rng.integers(2, 12))
        n = int(rng.choice([10, 100, 1000, 10_000]))
        counts = random_counts(rng, classes, n, trial % 2 == 0)
        if trial % 5 == 0:  # ties between the top two, and among the runners-up
            counts[rng.choice(classes, 2, replace=False)] = int(counts.max())
        alpha = float(rng.choice([0.001, 0.05]))
        want = reference_predict(counts, alpha)
        got = C.cohen_predict(counts, alpha)
        assert (got[0], got[2], got[3]) == (want[0], want[2], want[3])
        assert got[1] == pytest.approx(want[1], rel=1e-12, abs=1e-300)
