// smoothgen._C: the pybind11 face of the C++ core (the only file that includes pybind11).
//
// Arrays are taken as they are, never copied or converted: each must already have the documented dtype
// and be C-contiguous (a TypeError says otherwise; smoothgen/_core.py prepares them). The GIL is
// released while the core computes. A smoothgen::Error becomes smoothgen._C.CoreError (a ValueError)
// whose message starts with the status name, e.g. "non-finite input: ...".
#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "smoothgen/center.h"
#include "smoothgen/cohen.h"
#include "smoothgen/stats.h"

namespace py = pybind11;

namespace {

template <class T>
const T* input(const py::array& a, const char* name, int ndim) {
  if (!a.dtype().is(py::dtype::of<T>()))
    throw py::type_error(std::string(name) + " must have dtype " + std::string(py::str(py::dtype::of<T>())) +
                         ", got " + std::string(py::str(a.dtype())) + " (the core never converts)");
  if (!(a.flags() & py::array::c_style)) throw py::type_error(std::string(name) + " must be C-contiguous");
  if (ndim >= 0 && a.ndim() != ndim)
    throw py::value_error(std::string(name) + " must have " + std::to_string(ndim) + " dimensions, got " +
                          std::to_string(a.ndim()));
  return static_cast<const T*>(a.data());
}

smoothgen::Metric metric_for(int kind, int64_t dim, int64_t length, int64_t channels, int64_t height, int64_t width) {
  smoothgen::Metric m;
  m.kind = static_cast<smoothgen::MetricKind>(kind);
  m.dim = dim;
  m.length = length;
  m.channels = channels;
  m.height = height;
  m.width = width;
  return m;
}

int64_t rows_of(const py::array& a) { return a.ndim() >= 1 ? static_cast<int64_t>(a.shape(0)) : 0; }
int64_t dim_of(const py::array& a) { return a.ndim() == 2 ? static_cast<int64_t>(a.shape(1)) : 0; }

#define SG_METRIC_ARGS py::arg("kind"), py::arg("length") = 0, py::arg("channels") = 0, py::arg("height") = 0, py::arg("width") = 0

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "smoothgen's C++ core: certificate statistics and center smoothing on float32 buffers.";
  py::register_exception<smoothgen::Error>(m, "CoreError", PyExc_ValueError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const smoothgen::Error& e) {
      const std::string message = std::string(smoothgen::status_name(e.status())) + ": " + e.what();
      py::object type = py::module_::import("smoothgen._C").attr("CoreError");
      PyErr_SetString(type.ptr(), message.c_str());
    }
  });
  m.attr("METRIC_KINDS") = py::dict(py::arg("l2") = 0, py::arg("l1") = 1, py::arg("cosine") = 2,
                                    py::arg("tv1d") = 3, py::arg("tv2d") = 4);
  m.def("simd_level", &smoothgen::simd_level, "SIMD level of the distance kernels: avx512, avx2 or generic.");

  // --- statistics: scalars in, scalars out (microseconds; the GIL is kept) ---
  m.def("clopper_pearson_lower", &smoothgen::clopper_pearson_lower, py::arg("k"), py::arg("n"), py::arg("alpha"));
  m.def("clopper_pearson_upper", &smoothgen::clopper_pearson_upper, py::arg("k"), py::arg("n"), py::arg("alpha"));
  m.def("binomial_test_pvalue", &smoothgen::binomial_test_pvalue, py::arg("k"), py::arg("n"), py::arg("p") = 0.5);
  m.def("hoeffding_radius", &smoothgen::hoeffding_radius, py::arg("n"), py::arg("alpha"), py::arg("two_sided") = false);
  m.def("hoeffding_lower", &smoothgen::hoeffding_lower, py::arg("mean"), py::arg("n"), py::arg("alpha"));
  m.def("hoeffding_upper", &smoothgen::hoeffding_upper, py::arg("mean"), py::arg("n"), py::arg("alpha"));
  m.def("dkw_quantile_level", &smoothgen::dkw_quantile_level, py::arg("p"), py::arg("m"), py::arg("alpha"),
        py::arg("noise_tv") = 0.0, "q = p + noise_tv + sqrt(ln(1/alpha) / (2m)).");
  m.def("order_statistic_index", &smoothgen::order_statistic_index, py::arg("q"), py::arg("m"),
        "ceil(q m) clamped to [1, m], or 0 when q > 1.");
  m.def("normal_cdf", &smoothgen::normal_cdf, py::arg("z"));
  m.def("normal_ppf", &smoothgen::normal_ppf, py::arg("p"));
  m.def("cohen_radius", &smoothgen::cohen_radius, py::arg("sigma"), py::arg("p_lower"));
  m.def("max_certifiable_radius", &smoothgen::max_certifiable_radius, py::arg("sigma"), py::arg("n"), py::arg("alpha"));
  m.def(
      "center_smoothing_check",
      [](double p, int64_t n, double alpha1, double delta, std::optional<int64_t> n_select, double noise_tv) {
        const smoothgen::CenterCheck c =
            smoothgen::center_smoothing_check(p, n, alpha1, delta, n_select.value_or(n), noise_tv);
        return py::make_tuple(c.accepted, c.delta1, c.delta2);
      },
      py::arg("p"), py::arg("n"), py::arg("alpha1"), py::arg("delta"), py::arg("n_select") = py::none(),
      py::arg("noise_tv") = 0.0,
      "(accepted, delta1, delta2) with delta1 = sqrt(ln(2/alpha1) / (2 min(n, n_select))) + noise_tv "
      "(n_select None: n).");
  m.def(
      "center_candidate_miss",
      [](double delta, std::optional<int64_t> n_candidates, int64_t n, double noise_tv) {
        return smoothgen::center_candidate_miss(delta, n_candidates.value_or(0), n, noise_tv);
      },
      py::arg("delta"), py::arg("n_candidates"), py::arg("n"), py::arg("noise_tv") = 0.0,
      "(1/2 - delta + noise_tv)^n_candidates (capped at 1) when 1 <= n_candidates < n, else 0 (None: exact).");
  m.def("center_certify_level", &smoothgen::center_certify_level, py::arg("eps_in"), py::arg("sigma"), py::arg("delta"));
  m.def("center_eps_out", &smoothgen::center_eps_out, py::arg("gamma"), py::arg("beta"), py::arg("r_hat"));

  m.def(
      "order_statistic",
      [](const py::array& values, int64_t k) -> double {
        const int64_t size = static_cast<int64_t>(values.size());
        if (values.dtype().is(py::dtype::of<double>())) {
          const double* v = input<double>(values, "values", -1);
          py::gil_scoped_release release;
          return smoothgen::order_statistic(v, size, k);
        }
        const float* v = input<float>(values, "values", -1);
        py::gil_scoped_release release;
        return static_cast<double>(smoothgen::order_statistic(v, size, k));
      },
      py::arg("values"), py::arg("k"), "k-th smallest (1-based) of a C-contiguous float32 or float64 array.");

  // --- Cohen et al. from class counts ---
  m.def(
      "cohen_predict",
      [](const py::array& counts, double alpha) {
        const int64_t* c = input<int64_t>(counts, "counts", 1);
        const int64_t classes = rows_of(counts);
        smoothgen::CohenPrediction p;
        {
          py::gil_scoped_release release;
          p = smoothgen::cohen_predict(c, classes, alpha);
        }
        return py::make_tuple(p.prediction, p.pvalue, p.count_top, p.count_second);
      },
      py::arg("counts"), py::arg("alpha"), "(prediction or -1, pvalue, count_top, count_second)");
  m.def(
      "cohen_certify",
      [](const py::array& selection, const py::array& estimation, double sigma, double alpha) {
        const int64_t* s = input<int64_t>(selection, "selection_counts", 1);
        const int64_t* e = input<int64_t>(estimation, "estimation_counts", 1);
        if (rows_of(selection) != rows_of(estimation))
          throw py::value_error("selection and estimation counts must have the same number of classes");
        const int64_t classes = rows_of(selection);
        smoothgen::CohenCertificate c;
        {
          py::gil_scoped_release release;
          c = smoothgen::cohen_certify(s, e, classes, sigma, alpha);
        }
        return py::make_tuple(c.prediction, c.radius, c.p_lower, c.count, c.selected, c.n);
      },
      py::arg("selection_counts"), py::arg("estimation_counts"), py::arg("sigma"), py::arg("alpha"),
      "(prediction or -1, radius, p_lower, count, selected, n)");

  // --- center smoothing: float32 [rows, dim] buffers ---
  m.def(
      "pairwise_distances",
      [](const py::array& a, const py::array& b, int kind, int64_t length, int64_t channels, int64_t height,
         int64_t width) {
        const float* pa = input<float>(a, "a", 2);
        const float* pb = input<float>(b, "b", 2);
        if (dim_of(a) != dim_of(b)) throw py::value_error("a and b must have the same number of columns");
        const smoothgen::Metric metric = metric_for(kind, dim_of(a), length, channels, height, width);
        const int64_t n_a = rows_of(a), n_b = rows_of(b);
        py::array_t<float> out({std::max<int64_t>(n_a, 0), std::max<int64_t>(n_b, 0)});
        float* po = out.mutable_data();
        {
          py::gil_scoped_release release;
          smoothgen::pairwise_distances(pa, n_a, pb, n_b, metric, po);
        }
        return out;
      },
      py::arg("a"), py::arg("b"), SG_METRIC_ARGS);
  m.def(
      "distances_to_center",
      [](const py::array& center, const py::array& samples, int kind, int64_t length, int64_t channels,
         int64_t height, int64_t width) {
        const float* pc = input<float>(center, "center", 1);
        const float* ps = input<float>(samples, "samples", 2);
        if (rows_of(center) != dim_of(samples)) throw py::value_error("center must have as many values as a sample");
        const smoothgen::Metric metric = metric_for(kind, dim_of(samples), length, channels, height, width);
        const int64_t m_rows = rows_of(samples);
        py::array_t<float> out(m_rows);
        float* po = out.mutable_data();
        {
          py::gil_scoped_release release;
          smoothgen::distances_to_center(pc, ps, m_rows, metric, po);
        }
        return out;
      },
      py::arg("center"), py::arg("samples"), SG_METRIC_ARGS);
  m.def(
      "median_distances",
      [](const py::array& candidates, const py::array& samples, int kind, int64_t length, int64_t channels,
         int64_t height, int64_t width) {
        const float* pc = input<float>(candidates, "candidates", 2);
        const float* ps = input<float>(samples, "samples", 2);
        if (dim_of(candidates) != dim_of(samples))
          throw py::value_error("candidates and samples must have the same number of columns");
        const smoothgen::Metric metric = metric_for(kind, dim_of(samples), length, channels, height, width);
        const int64_t n_c = rows_of(candidates), n = rows_of(samples);
        py::array_t<float> out(std::max<int64_t>(n_c, 0));
        float* po = out.mutable_data();
        {
          py::gil_scoped_release release;
          smoothgen::median_distances(pc, n_c, ps, n, metric, po);
        }
        return out;
      },
      py::arg("candidates"), py::arg("samples"), SG_METRIC_ARGS);
  m.def(
      "kth_smallest_rows",
      [](const py::array& values, int64_t k) {
        const float* pv = input<float>(values, "values", 2);
        const int64_t rows = rows_of(values), cols = dim_of(values);
        py::array_t<float> out(std::max<int64_t>(rows, 0));
        float* po = out.mutable_data();
        {
          py::gil_scoped_release release;
          smoothgen::kth_smallest_rows(pv, rows, cols, k, po);
        }
        return out;
      },
      py::arg("values"), py::arg("k"));
  m.def(
      "min_median_center",
      [](const py::array& samples, int64_t n_candidates, int kind, int64_t length, int64_t channels, int64_t height,
         int64_t width) {
        const float* ps = input<float>(samples, "samples", 2);
        const smoothgen::Metric metric = metric_for(kind, dim_of(samples), length, channels, height, width);
        const int64_t n = rows_of(samples);
        smoothgen::CenterChoice c;
        {
          py::gil_scoped_release release;
          c = smoothgen::min_median_center(ps, n, metric, n_candidates);
        }
        return py::make_tuple(c.index, static_cast<double>(c.radius));
      },
      py::arg("samples"), py::arg("n_candidates"), SG_METRIC_ARGS, "(index, radius) of the min-median center.");
  m.def(
      "center_certify",
      [](const py::array& selection, const py::array& check, const py::array& radius_samples, double sigma,
         double eps_in, double delta, double alpha1, double alpha2, int64_t n_candidates, int kind, int64_t length,
         int64_t channels, int64_t height, int64_t width, double noise_tv) {
        const float* p1 = input<float>(selection, "selection", 2);
        const float* p2 = input<float>(check, "check", 2);
        const float* p3 = input<float>(radius_samples, "radius_samples", 2);
        if (dim_of(selection) != dim_of(check) || dim_of(selection) != dim_of(radius_samples))
          throw py::value_error("all sample buffers must have the same number of columns");
        const smoothgen::Metric metric = metric_for(kind, dim_of(selection), length, channels, height, width);
        smoothgen::CenterParams params;
        params.sigma = sigma;
        params.eps_in = eps_in;
        params.delta = delta;
        params.alpha1 = alpha1;
        params.alpha2 = alpha2;
        params.n_candidates = n_candidates;
        params.noise_tv = noise_tv;
        smoothgen::CenterCertificate c;
        {
          py::gil_scoped_release release;
          c = smoothgen::center_certify(p1, rows_of(selection), p2, rows_of(check), p3, rows_of(radius_samples),
                                        metric, params);
        }
        static const char* reasons[] = {"", "q > 1", "center check failed"};
        py::dict d;
        d["center_index"] = c.center_index;
        d["center_radius"] = static_cast<double>(c.center_radius);
        d["p_within"] = c.p_within;
        d["delta1"] = c.delta1;
        d["delta2"] = c.delta2;
        d["accepted"] = c.accepted;
        d["p"] = c.p;
        d["q"] = c.q;
        d["k"] = c.k;
        d["abstained"] = c.reason != smoothgen::CenterAbstain::None;
        d["reason"] = c.reason == smoothgen::CenterAbstain::None ? py::object(py::none())
                                                                   : py::object(py::str(reasons[static_cast<int>(c.reason)]));
        d["r_hat"] = c.r_hat;
        d["eps_out"] = c.eps_out;
        d["gamma"] = c.gamma;
        d["beta"] = c.beta;
        d["candidate_miss"] = c.candidate_miss;
        d["failure_probability"] = c.failure_probability;
        return d;
      },
      py::arg("selection"), py::arg("check"), py::arg("radius_samples"), py::arg("sigma"), py::arg("eps_in"),
      py::arg("delta"), py::arg("alpha1"), py::arg("alpha2"), py::arg("n_candidates"), SG_METRIC_ARGS,
      py::arg("noise_tv") = 0.0,
      "The center certificate as a dict (smoothgen::CenterCertificate's fields, reason as text or None). "
      "Samples: i.i.d. draws from a sampler within noise_tv (total variation per copy) of N(0, sigma^2 I).");
}
