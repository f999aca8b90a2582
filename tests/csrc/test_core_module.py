"""The C++ core as a dependency: it is built where it must be, switchable, and missing it only slows things down."""
import logging
import os

import numpy as np
import pytest
import torch

from smoothgen import CenterSmoother, _core, stats
from smoothgen.center import _core_metric
from smoothgen.metrics import Metric, get_metric

needs_core = pytest.mark.skipif(not _core.HAVE_CORE, reason=f"C++ core not built: {_core.REASON}")


def test_core_is_built_where_required():
    # `make test` (and so CI) sets SMOOTHGEN_REQUIRE_CORE=1: there, a missing extension is a failure,
    # not a silent fallback to the slower Python reference.
    if os.environ.get("SMOOTHGEN_REQUIRE_CORE") == "1":
        assert _core.HAVE_CORE, f"smoothgen._C is missing: {_core.REASON}"
    else:
        assert _core.HAVE_CORE or _core.REASON


@needs_core
def test_simd_level_and_errors():
    assert _core._C.simd_level() in ("avx512", "avx2", "generic")
    with pytest.raises(_core.CoreError, match="non-finite input"):
        _core._C.normal_cdf(float("nan"))
    assert issubclass(_core.CoreError, ValueError)


@needs_core
def test_bindings_never_copy_or_convert():
    a = np.zeros((4, 3), dtype=np.float64)
    with pytest.raises(TypeError, match="dtype float32"):
        _core._C.pairwise_distances(a, a, kind=0)
    b = np.zeros((3, 4), dtype=np.float32).T  # a transposed view: not C-contiguous
    with pytest.raises(TypeError, match="C-contiguous"):
        _core._C.pairwise_distances(b, b, kind=0)


@needs_core
def test_switch_selects_the_path(monkeypatch):
    calls = []
    real = _core._C

    class Spy:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(real, name)

    monkeypatch.setattr(_core, "_C", Spy())
    stats.clopper_pearson_lower(5, 10, 0.01)
    assert calls == ["clopper_pearson_lower"]
    with _core.disabled():
        assert not _core.enabled()
        stats.clopper_pearson_lower(5, 10, 0.01)
    assert calls == ["clopper_pearson_lower"]
    assert _core.enabled()


def test_fallback_is_logged_once_and_gives_the_same_results(monkeypatch, caplog):
    monkeypatch.setattr(_core, "_C", None)
    monkeypatch.setattr(_core, "HAVE_CORE", False)
    monkeypatch.setattr(_core, "REASON", "simulated: not built")
    monkeypatch.setattr(_core, "_logged", False)
    with caplog.at_level(logging.WARNING, logger="smoothgen._core"):
        assert stats.clopper_pearson_lower(5, 10, 0.001) == pytest.approx(0.08981318981185427, rel=1e-12)
        assert stats.normal_ppf(0.975) == pytest.approx(1.959963984540054, rel=1e-12)
    messages = [r.getMessage() for r in caplog.records if r.name == "smoothgen._core"]
    assert len(messages) == 1 and "simulated: not built" in messages[0]


@needs_core
def test_core_covers_exactly_the_builtin_metrics():
    x = torch.zeros(3, 2, 4, 5)
    for name in ("l2", "l1", "cosine", "tv1d", "tv2d"):
        assert _core_metric(get_metric(name), x) is not None, name
    for name in ("angular", "jaccard", "w1"):
        assert _core_metric(get_metric(name), torch.ones(3, 4)) is None, name
    assert _core_metric(get_metric("l2"), x.double()) is None  # float64 is computed by the reference
    assert _core_metric(get_metric("tv2d"), torch.zeros(3, 1, 2, 4, 5)) is None  # the reference rejects it
    l2 = get_metric("l2")
    custom = Metric(name="my_l2", gamma=1.0, pairwise=lambda a, b: l2.pairwise(a, b), kind="tensor")
    assert _core_metric(custom, x) is None  # a user's function, even one that calls a built-in


@needs_core
def test_core_path_keeps_the_reference_errors():
    smoother = CenterSmoother(torch.nn.Identity(), 0.25, metric="cosine")
    from smoothgen.center import min_median_center

    zero_row = torch.randn(5, 4)
    zero_row[2] = 0
    with pytest.raises(Exception) as core_error:
        min_median_center(zero_row, smoother.metric)
    with _core.disabled(), pytest.raises(Exception) as reference_error:
        min_median_center(zero_row, smoother.metric)
    assert type(core_error.value) is type(reference_error.value)
    assert str(core_error.value) == str(reference_error.value)
    nan = torch.randn(5, 4)
    nan[1, 1] = float("nan")
    with pytest.raises(Exception) as core_error:
        min_median_center(nan, get_metric("l2"))
    with _core.disabled(), pytest.raises(Exception) as reference_error:
        min_median_center(nan, get_metric("l2"))
    assert type(core_error.value) is type(reference_error.value)
