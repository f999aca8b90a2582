"""Garbage at the public entry points (issue 13): every call gives a result or a SmoothgenError — never
another exception type, never a hang, never a certificate for invalid input. Property-based (hypothesis,
pinned), a fixed number of examples from a fixed seed, so CI sees what a local run saw."""
from __future__ import annotations

import inspect
import math

import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from smoothgen import stats
from smoothgen.errors import SmoothgenError

#: Values a careless or hostile caller passes where numbers are expected.
GARBAGE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-2.0, max_value=2.0),
    st.text(max_size=5),
    st.lists(st.integers(-3, 3), max_size=3),
    st.just(float("nan")),
    st.just(0.5),
    st.just(10),
)

STATS_FUNCTIONS = [getattr(stats, name) for name in (
    "lower_under_gaussian", "upper_under_gaussian", "alpha_under_sampler", "clopper_pearson_lower",
    "clopper_pearson_upper", "binomial_test_pvalue", "hoeffding_radius", "hoeffding_lower", "hoeffding_upper",
    "dkw_quantile_level", "order_statistic_index", "normal_cdf", "normal_ppf", "cohen_radius",
    "max_certifiable_radius", "center_smoothing_check", "center_candidate_miss", "center_certify_level",
    "center_eps_out", "empirical_bernstein_radius", "empirical_bernstein_lower", "bounded_mean_lower",
    "generation_step_radius", "tv_bound", "wasserstein_bound", "event_probability_bound", "mean_smoothing_bound",
    "vector_mean_deviation",
)]


def _positional_count(fn) -> int:
    return sum(1 for p in inspect.signature(fn).parameters.values()
               if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty)


def _check_result(value) -> None:
    """A returned number is never NaN (a bound that is NaN certifies nothing and says nothing)."""
    for v in value if isinstance(value, tuple) else (value,):
        if isinstance(v, float):
            assert not math.isnan(v)


@pytest.mark.parametrize("fn", STATS_FUNCTIONS, ids=lambda f: f.__name__)
@seed(20261130)
@settings(max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_stats_functions_take_garbage(fn, data):
    args = [data.draw(GARBAGE) for _ in range(_positional_count(fn))]
    try:
        result = fn(*args)
    except SmoothgenError:
        return
    _check_result(result)


# --------------------------------------------------------------------------------------------------
# The algorithms, the scheduler and the CLI's parser
# --------------------------------------------------------------------------------------------------

INPUTS = st.one_of(
    st.none(),
    st.just(torch.zeros(2)),
    st.just(torch.zeros(3)),
    st.just(torch.zeros(2, dtype=torch.int64)),
    st.just(torch.full((2,), float("nan"))),
    st.just(torch.zeros(2, dtype=torch.float64)),
    st.just(torch.zeros(0)),
    st.lists(st.floats(), max_size=3),
    st.text(max_size=3),
)
SMALL_COUNTS = st.one_of(GARBAGE, st.integers(1, 50))


def sign_model(x):
    return torch.stack([-x[:, 0], x[:, 0]], dim=1)


@seed(20261130)
@settings(max_examples=120, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(x=INPUTS, n0=SMALL_COUNTS, n=SMALL_COUNTS, alpha=GARBAGE, sigma=GARBAGE, seed_=GARBAGE, request_id=GARBAGE)
def test_classifier_takes_garbage(x, n0, n, alpha, sigma, seed_, request_id):
    from smoothgen import SmoothedClassifier

    try:
        smoothed = SmoothedClassifier(sign_model, 2, sigma, input_shape=(2,))
        cert = smoothed.certify(x, n0, n, alpha, seed=seed_, request_id=request_id)
    except SmoothgenError:
        return
    # A certificate came back: then every argument was valid.
    assert isinstance(x, torch.Tensor) and x.shape == (2,) and bool(torch.isfinite(x).all())
    assert 0 < alpha < 1 and sigma > 0 and n >= 1 and n0 >= 1
    assert cert.radius >= 0 and not math.isnan(cert.radius)


@seed(20261130)
@settings(max_examples=80, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(x=INPUTS, n=SMALL_COUNTS, delta=GARBAGE, alpha1=GARBAGE, sigma=GARBAGE, metric=st.sampled_from(["l2", "l1", "nope", 3]))
def test_center_smoother_takes_garbage(x, n, delta, alpha1, sigma, metric):
    from smoothgen import CenterSmoother

    try:
        result = CenterSmoother(lambda b: b * 2, sigma, metric).smooth(x, n=n, delta=delta, alpha1=alpha1, seed=0)
    except SmoothgenError:
        return
    assert isinstance(x, torch.Tensor) and 0 < delta < 0.5 and 0 < alpha1 < 1
    assert not math.isnan(result.p)


@seed(20261130)
@settings(max_examples=80, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(x=INPUTS, n=SMALL_COUNTS, sigma=GARBAGE, timeout=GARBAGE, quota=GARBAGE, start=GARBAGE)
def test_scheduler_submit_takes_garbage(scheduler, x, n, sigma, timeout, quota, start):
    from smoothgen.engine import ClassCounts, Purpose, RandomStream
    from smoothgen.engine.scheduler import Request

    request = Request(x, n, sigma, RandomStream(0).key(Purpose.ESTIMATION), ClassCounts(2), quota=quota, start=start)
    try:
        future = scheduler.submit(request, timeout=timeout)
        counts = future.result(timeout=30)
    except SmoothgenError:
        return
    assert int(counts.sum()) == n
    # the scheduler still serves a correct request after whatever came before
    good = Request(torch.zeros(2), 5, 1.0, RandomStream(1).key(Purpose.ESTIMATION), ClassCounts(2))
    assert int(scheduler.submit(good, timeout=30).result(timeout=30).sum()) == 5


@pytest.fixture(scope="module")
def scheduler():
    from smoothgen.engine.scheduler import Scheduler

    with Scheduler(sign_model, batch_size=16) as sch:
        yield sch


WORDS = st.sampled_from(["certify", "center", "generate", "--sigma", "--n", "--alpha", "nan", "-1", "0", "1e400",
                         "--seed", "--out", "--resume", "--overwrite", "--num", "x", "--noise", "ablate", "--keep"])


@seed(20261130)
@settings(max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(argv=st.lists(WORDS, max_size=6))
def test_cli_parser_takes_garbage(argv):
    """The argument parser either parses or exits with argparse's usage error (exit 2), nothing else."""
    from smoothgen.cli import build_parser

    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        assert exc.code in (0, 2)
