"""Fuzz the C ABI of libsmoothgen_core (loaded with ctypes) with atheris: random sizes, NaN/Inf, zero
lengths, null pointers, huge counts, impossible parameters.

The library is not compiled with coverage instrumentation (GCC), so the harness's own Python branches
(instrumented) guide the search. Every call must return a known status code, never crash, abort or trip a sanitizer; a successful call
must return sane outputs. Buffers always hold what their sizes claim (reading past a caller's buffer is
the caller's bug, not detectable), except sizes so large that the library must refuse them unread.

    python tests/csrc/fuzz_c_abi.py LIBRARY [libFuzzer options, e.g. -max_total_time=30 -seed=1]
"""
import ctypes
import math
import struct
import sys

import atheris

I64, F64, F32, I32, P = ctypes.c_int64, ctypes.c_double, ctypes.c_float, ctypes.c_int32, ctypes.c_void_p
STATUSES = set(range(9))
INT64_MAX = 2**63 - 1


class Metric(ctypes.Structure):
    _fields_ = [("kind", I32), ("dim", I64), ("length", I64), ("channels", I64), ("height", I64), ("width", I64)]


class CenterParams(ctypes.Structure):
    _fields_ = [("sigma", F64), ("eps_in", F64), ("delta", F64), ("alpha1", F64), ("alpha2", F64), ("n_candidates", I64),
                ("noise_tv", F64)]


class CenterCertificate(ctypes.Structure):
    _fields_ = [("center_index", I64), ("center_radius", F32), ("p_within", F64), ("delta1", F64), ("delta2", F64),
                ("accepted", I32), ("p", F64), ("q", F64), ("k", I64), ("reason", I32), ("r_hat", F64),
                ("eps_out", F64), ("gamma", F64), ("beta", F64), ("candidate_miss", F64), ("failure_probability", F64)]


class CohenCertificate(ctypes.Structure):
    _fields_ = [("prediction", I64), ("radius", F64), ("p_lower", F64), ("count", I64), ("selected", I64), ("n", I64)]


class CohenPrediction(ctypes.Structure):
    _fields_ = [("prediction", I64), ("pvalue", F64), ("count_top", I64), ("count_second", I64)]


lib = ctypes.CDLL(sys.argv[1])
SCALARS = {  # name: argument types (the output pointer comes last)
    "clopper_pearson_lower": ("i", "i", "d"), "clopper_pearson_upper": ("i", "i", "d"),
    "binomial_test_pvalue": ("i", "i", "d"), "hoeffding_radius": ("i", "d", "b"),
    "hoeffding_lower": ("d", "i", "d"), "hoeffding_upper": ("d", "i", "d"), "dkw_quantile_level": ("d", "i", "d", "d"),
    "normal_cdf": ("d",), "normal_ppf": ("d",), "cohen_radius": ("d", "d"), "max_certifiable_radius": ("d", "i", "d"),
    "center_certify_level": ("d", "d", "d"), "center_eps_out": ("d", "d", "d"), "center_candidate_miss": ("d", "i", "i", "d"),
}
for name, kinds in SCALARS.items():
    fn = getattr(lib, f"smoothgen_{name}")
    fn.argtypes = [{"i": I64, "d": F64, "b": I32}[k] for k in kinds] + [P]
    fn.restype = ctypes.c_int
# Every prototype is declared, so that ctypes passes each argument in the register the C ABI expects.
lib.smoothgen_center_smoothing_check.argtypes = [F64, I64, F64, F64, I64, F64, P, P, P]
lib.smoothgen_center_smoothing_check.restype = ctypes.c_int
lib.smoothgen_center_certify.argtypes = [P, I64, P, I64, P, I64, P, P, P]
lib.smoothgen_center_certify.restype = ctypes.c_int
lib.smoothgen_last_error.restype = ctypes.c_char_p


def an_int(fdp):
    pick = fdp.ConsumeIntInRange(0, 5)
    if pick == 0:
        return fdp.PickValueInList([0, 1, -1, 2, INT64_MAX, -INT64_MAX - 1, 2**62, 2**53 + 1, 10**6])
    if pick == 1:
        return fdp.ConsumeIntInRange(-(2**63), INT64_MAX)
    return fdp.ConsumeIntInRange(-2, 2000)


def a_double(fdp):
    pick = fdp.ConsumeIntInRange(0, 4)
    if pick == 0:
        return fdp.PickValueInList([math.nan, math.inf, -math.inf, 0.0, -0.0, 1.0, 0.5, 1e-300, 5e-324, 1e300,
                                    0.999999999, 1e-12, 2.0, -1.0])
    if pick == 1:
        return fdp.ConsumeFloat()
    return fdp.ConsumeProbability() * fdp.PickValueInList([1.0, 0.5, 3.0])


def check_status(status, what):
    if status not in STATUSES:
        raise RuntimeError(f"{what}: unknown status {status}")
    if status != 0 and not lib.smoothgen_last_error():
        raise RuntimeError(f"{what}: status {status} without a message")


@atheris.instrument_func
def fuzz_scalar(fdp):
    name = fdp.PickValueInList(sorted(SCALARS))
    args = [an_int(fdp) if k == "i" else a_double(fdp) if k == "d" else fdp.ConsumeIntInRange(0, 1) for k in SCALARS[name]]
    out = F64(-12345.0)
    null = fdp.ConsumeIntInRange(0, 15) == 0
    status = getattr(lib, f"smoothgen_{name}")(*args, None if null else ctypes.byref(out))
    check_status(status, name)
    if null and status == 0:
        raise RuntimeError(f"{name}: accepted a null output pointer")
    if status == 0:
        v = out.value
        if math.isnan(v):
            raise RuntimeError(f"{name}{tuple(args)} returned NaN")
        if name.startswith(("clopper", "binomial", "normal_cdf", "center_candidate_miss")) and not 0.0 <= v <= 1.0:
            raise RuntimeError(f"{name}{tuple(args)} returned {v}, not a probability")
        if name in ("clopper_pearson_lower", "hoeffding_lower") and not v < 1.0:
            raise RuntimeError(f"{name}{tuple(args)} returned {v}: a lower bound on a probability must stay below 1")
        if name.endswith(("radius", "eps_out")) and v < 0:
            raise RuntimeError(f"{name}{tuple(args)} returned a negative radius {v}")


def float_buffer(fdp, count):
    values = []
    for _ in range(count):
        pick = fdp.ConsumeIntInRange(0, 30)
        if pick == 0:
            values.append(fdp.PickValueInList([math.nan, math.inf, -math.inf, 3e38, -3e38, 1e-45, 0.0]))
        elif pick < 4:
            values.append(0.0)
        else:
            values.append(fdp.ConsumeFloatInRange(-4.0, 4.0))
    return (F32 * max(count, 1))(*values)


def a_metric(fdp, dim):
    m = Metric(fdp.ConsumeIntInRange(-1, 5), dim, 0, 0, 0, 0)
    if fdp.ConsumeBool():  # a consistent shape
        if m.kind == 3:
            divisors = [d for d in range(1, dim + 1) if dim % d == 0] or [1]
            m.length = fdp.PickValueInList(divisors)
        elif m.kind == 4:
            m.channels, m.height = 1, 1
            m.width = dim
    else:
        m.length, m.channels, m.height, m.width = (an_int(fdp) for _ in range(4))
    return m


@atheris.instrument_func
def fuzz_buffers(fdp):
    which = fdp.ConsumeIntInRange(0, 4)
    rows_a, rows_b, dim = fdp.ConsumeIntInRange(0, 9), fdp.ConsumeIntInRange(0, 9), fdp.ConsumeIntInRange(0, 11)
    a, b = float_buffer(fdp, rows_a * dim), float_buffer(fdp, rows_b * dim)
    metric = a_metric(fdp, dim)
    out = (F32 * max(rows_a * rows_b, rows_a, rows_b, 1))()
    # Sizes that cannot be addressed must be refused before anything is read.
    huge = fdp.ConsumeIntInRange(0, 20) == 0
    if huge:
        rows_a, metric.dim = 2**40, 2**62  # dim alone overflows any buffer
    pa = None if fdp.ConsumeIntInRange(0, 20) == 0 else a
    mp = None if fdp.ConsumeIntInRange(0, 30) == 0 else ctypes.byref(metric)
    if which == 0:
        status = lib.smoothgen_pairwise_distances(pa, I64(rows_a), b, I64(rows_b), mp, out)
        produced = rows_a * rows_b
    elif which == 1:
        status = lib.smoothgen_distances_to_center(pa, b, I64(rows_b), mp, out)
        produced = rows_b
    elif which == 2:
        status = lib.smoothgen_median_distances(pa, I64(rows_a), b, I64(rows_b), mp, out)
        produced = rows_a
    elif which == 3:
        index, radius = I64(-5), F32(-5)
        status = lib.smoothgen_min_median_center(pa, I64(rows_a), mp, I64(an_int(fdp)), ctypes.byref(index), ctypes.byref(radius))
        check_status(status, "min_median_center")
        if status == 0 and not (0 <= index.value < rows_a and radius.value >= 0 and math.isfinite(radius.value)):
            raise RuntimeError(f"min_median_center returned index {index.value} radius {radius.value}")
        return
    else:
        params = CenterParams(*(a_double(fdp) for _ in range(5)), an_int(fdp), a_double(fdp))
        cert = CenterCertificate()
        status = lib.smoothgen_center_certify(pa, I64(rows_a), b, I64(rows_b), a, I64(rows_a), mp, ctypes.byref(params),
                                              ctypes.byref(cert))
        check_status(status, "center_certify")
        if status == 0 and not (0 <= cert.center_index < rows_a and cert.reason in (0, 1, 2)):
            raise RuntimeError("center_certify returned an impossible certificate")
        if status == 0:
            exact = params.n_candidates <= 0 or params.n_candidates >= rows_a
            if not (0.0 <= cert.candidate_miss <= 1.0) or (exact and cert.candidate_miss != 0.0):
                raise RuntimeError(f"center_certify returned candidate_miss {cert.candidate_miss}")
            if cert.failure_probability != min(1.0, params.alpha1 + params.alpha2 + cert.candidate_miss):
                raise RuntimeError(f"center_certify returned failure_probability {cert.failure_probability}")
            if not (cert.delta1 >= params.noise_tv and (cert.accepted == 0 or max(cert.delta1, cert.delta2) <= params.delta)):
                raise RuntimeError(f"center_certify accepted with delta1 {cert.delta1}, delta2 {cert.delta2}")
        return
    check_status(status, ["pairwise", "to_center", "medians"][which])
    if huge and status == 0:
        raise RuntimeError("a size beyond any buffer was accepted")
    if status == 0:
        for v in out[:produced]:
            if not (v >= 0 and math.isfinite(v)):
                raise RuntimeError(f"invalid distance {v}")


@atheris.instrument_func
def fuzz_counts(fdp):
    classes = fdp.ConsumeIntInRange(0, 8)
    sel = (I64 * max(classes, 1))(*(an_int(fdp) if fdp.ConsumeIntInRange(0, 6) == 0 else fdp.ConsumeIntInRange(0, 1000) for _ in range(classes)))
    est = (I64 * max(classes, 1))(*(an_int(fdp) if fdp.ConsumeIntInRange(0, 6) == 0 else fdp.ConsumeIntInRange(0, 10**6) for _ in range(classes)))
    declared = classes if fdp.ConsumeIntInRange(0, 10) else fdp.PickValueInList([0, -1, 1, min(classes, 1)])
    if fdp.ConsumeBool():
        cert = CohenCertificate()
        status = lib.smoothgen_cohen_certify(sel, None if fdp.ConsumeIntInRange(0, 20) == 0 else est, I64(declared),
                                             F64(a_double(fdp)), F64(a_double(fdp)), ctypes.byref(cert))
        check_status(status, "cohen_certify")
        if status == 0 and not (cert.prediction == -1 or 0 <= cert.prediction < declared) or (status == 0 and cert.radius < 0):
            raise RuntimeError("cohen_certify returned an impossible certificate")
    else:
        pred = CohenPrediction()
        status = lib.smoothgen_cohen_predict(est, I64(declared), F64(a_double(fdp)), ctypes.byref(pred))
        check_status(status, "cohen_predict")
        if status == 0 and not (0.0 <= pred.pvalue <= 1.0):
            raise RuntimeError(f"cohen_predict returned p-value {pred.pvalue}")


@atheris.instrument_func
def fuzz_order_statistic(fdp):
    size = fdp.ConsumeIntInRange(0, 40)
    values = float_buffer(fdp, size)
    out = F32()
    status = lib.smoothgen_order_statistic_f32(values, I64(size), I64(an_int(fdp) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, size + 1)), ctypes.byref(out))
    check_status(status, "order_statistic_f32")
    q, index = a_double(fdp), I64()
    check_status(lib.smoothgen_order_statistic_index(F64(q), I64(an_int(fdp)), ctypes.byref(index)), "order_statistic_index")


@atheris.instrument_func
def fuzz_center_check(fdp):
    p, n, alpha1, delta, n_select, noise_tv = a_double(fdp), an_int(fdp), a_double(fdp), a_double(fdp), an_int(fdp), a_double(fdp)
    accepted, delta1, delta2 = I32(-1), F64(-1.0), F64(-1.0)
    null = fdp.ConsumeIntInRange(0, 15) == 0
    status = lib.smoothgen_center_smoothing_check(F64(p), I64(n), F64(alpha1), F64(delta), I64(n_select), F64(noise_tv),
                                                  ctypes.byref(accepted), None if null else ctypes.byref(delta1),
                                                  ctypes.byref(delta2))
    check_status(status, "center_smoothing_check")
    if status == 0 and null:
        raise RuntimeError("center_smoothing_check accepted a null output pointer")
    # delta1 may be +inf (alpha1 below 2 / DBL_MAX overflows ln(2 / alpha1)): a check that rejects, sound.
    if status == 0 and not (accepted.value in (0, 1) and delta1.value >= noise_tv
                            and (accepted.value == 0 or max(delta1.value, delta2.value) <= delta)):
        raise RuntimeError(f"center_smoothing_check{(p, n, alpha1, delta, n_select, noise_tv)} returned "
                           f"{accepted.value}, {delta1.value}, {delta2.value}")


@atheris.instrument_func
def test_one_input(data):
    fdp = atheris.FuzzedDataProvider(data)
    target = fdp.ConsumeIntInRange(0, 4)
    (fuzz_scalar, fuzz_buffers, fuzz_counts, fuzz_order_statistic, fuzz_center_check)[target](fdp)


if __name__ == "__main__":
    atheris.Setup([sys.argv[0], *sys.argv[2:]], test_one_input)
    atheris.Fuzz()
