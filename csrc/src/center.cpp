// Center smoothing on float32 buffers: distances, per-row selection, the min-median center, the certificate.
#include "smoothgen/center.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <new>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "checks.h"
#include "kernels.h"
#include "smoothgen/stats.h"

namespace smoothgen {
namespace {

using detail::fail;

// ---------------------------------------------------------------------------------------------
// SIMD level
// ---------------------------------------------------------------------------------------------

struct Kernel {
  kernels::BlockFn fn;
  const char* name;
};

Kernel choose_kernel() {
  const char* env = std::getenv("SMOOTHGEN_SIMD");
  const std::string wanted = env ? env : "";
  (void)wanted;
#if defined(SMOOTHGEN_HAVE_AVX512)
  if (wanted != "generic" && wanted != "avx2" && __builtin_cpu_supports("avx512f") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma"))
    return {kernels::block_avx512, "avx512"};
#endif
#if defined(SMOOTHGEN_HAVE_AVX2)
  if (wanted != "generic" && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return {kernels::block_avx2, "avx2"};
#endif
  return {kernels::block_generic, "generic"};
}

const Kernel& kernel() {
  static const Kernel k = choose_kernel();
  return k;
}

// ---------------------------------------------------------------------------------------------
// Threads and errors inside parallel regions
// ---------------------------------------------------------------------------------------------

int max_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// The first failure inside a parallel region: exceptions must not leave an OpenMP region, so each
// iteration catches, records and skips; the caller rethrows after the region.
class ParallelErrors {
 public:
  template <class F>
  void run(F&& f) noexcept {
    if (failed_.load(std::memory_order_relaxed)) return;
    try {
      f();
    } catch (const Error& e) {
      record(e.status(), e.what());
    } catch (const std::bad_alloc&) {
      record(Status::OutOfMemory, "out of memory in a worker thread");
    } catch (const std::exception& e) {
      record(Status::Internal, e.what());
    } catch (...) {
      record(Status::Internal, "unknown exception in a worker thread");
    }
  }
  void rethrow() const {
    if (failed_.load()) throw Error(status_, message_);
  }

 private:
  void record(Status status, const char* message) noexcept {
    bool expected = false;
    if (failed_.compare_exchange_strong(expected, true)) {
      status_ = status;
      try {
        message_ = message;
      } catch (...) {
      }
    }
  }
  std::atomic<bool> failed_{false};
  Status status_ = Status::Ok;
  std::string message_;
};

// ---------------------------------------------------------------------------------------------
// Metric features: every built-in metric is an l2 or l1 distance of per-row features
// ---------------------------------------------------------------------------------------------

// The rows a kernel compares: the outputs themselves (l2, l1) or features derived from them once per
// row (unit directions for cosine, finite differences for total variation), as smoothgen/metrics.py does.
struct Features {
  const float* data = nullptr;  // rows of `width` floats, `width` apart
  int64_t width = 0;
  std::vector<float> storage;
};

void check_inputs_finite(const float* x, int64_t rows, int64_t dim, const char* name) {
  const int64_t total = rows * dim;
  std::atomic<int64_t> bad{-1};
#pragma omp parallel for schedule(static) if (total > (1 << 20))
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * dim;
    bool ok = true;
    for (int64_t j = 0; j < dim; ++j) ok &= std::isfinite(row[j]);
    if (!ok) {
      int64_t expected = -1;
      bad.compare_exchange_strong(expected, r);
    }
  }
  if (bad.load() >= 0) fail(Status::NonFiniteInput, name, " contain NaN or Inf (row ", bad.load(), ")");
}

Features make_features(const float* x, int64_t rows, const Metric& metric, const char* name) {
  const int64_t dim = metric.dim;
  check_inputs_finite(x, rows, dim, name);
  Features f;
  switch (metric.kind) {
    case MetricKind::L2:
    case MetricKind::L1:
      f.data = x;
      f.width = dim;
      return f;
    case MetricKind::Cosine: {
      f.width = dim;
      f.storage.resize(static_cast<size_t>(detail::checked_elements(rows, dim, name)));
      float* out = f.storage.data();
      std::atomic<int64_t> zero{-1};
#pragma omp parallel for schedule(static) if (rows * dim > (1 << 18))
      for (int64_t r = 0; r < rows; ++r) {
        const float* row = x + r * dim;
        float* u = out + r * dim;
        // As smoothgen.metrics._unit_rows: divide by the largest magnitude first (no overflow or
        // underflow of the norm), then by the norm.
        float scale = 0.0f;
        for (int64_t j = 0; j < dim; ++j) scale = std::max(scale, std::fabs(row[j]));
        if (!(scale > 0.0f)) {
          int64_t expected = -1;
          zero.compare_exchange_strong(expected, r);
          continue;
        }
        double sq = 0.0;
        for (int64_t j = 0; j < dim; ++j) {
          u[j] = row[j] / scale;
          sq += static_cast<double>(u[j]) * static_cast<double>(u[j]);
        }
        const float norm = static_cast<float>(std::sqrt(sq));
        for (int64_t j = 0; j < dim; ++j) u[j] = u[j] / norm;
      }
      if (zero.load() >= 0)
        fail(Status::InvalidInput, "output ", zero.load(), " of ", name,
             " is the zero vector, whose angle is undefined (cosine metric)");
      f.data = out;
      return f;
    }
    case MetricKind::TV1D: {
      const int64_t len = metric.length, lead = dim / len;
      f.width = lead * (len - 1);
      f.storage.resize(static_cast<size_t>(detail::checked_elements(rows, std::max<int64_t>(f.width, 1), name)));
      float* out = f.storage.data();
#pragma omp parallel for schedule(static) if (rows * dim > (1 << 18))
      for (int64_t r = 0; r < rows; ++r) {
        const float* row = x + r * dim;
        float* g = out + r * f.width;
        for (int64_t l = 0; l < lead; ++l)
          for (int64_t i = 0; i + 1 < len; ++i) g[l * (len - 1) + i] = row[l * len + i + 1] - row[l * len + i];
      }
      f.data = out;
      return f;
    }
    case MetricKind::TV2D: {
      const int64_t C = metric.channels, H = metric.height, W = metric.width;
      const int64_t n_dh = C * (H - 1) * W, n_dw = C * H * (W - 1);
      f.width = n_dh + n_dw;
      f.storage.resize(static_cast<size_t>(detail::checked_elements(rows, std::max<int64_t>(f.width, 1), name)));
      float* out = f.storage.data();
#pragma omp parallel for schedule(static) if (rows * dim > (1 << 18))
      for (int64_t r = 0; r < rows; ++r) {
        const float* img = x + r * dim;
        float* g = out + r * f.width;
        // Vertical differences [C, H-1, W], then horizontal ones [C, H, W-1] (metrics._grad_features).
        for (int64_t c = 0; c < C; ++c)
          for (int64_t h = 0; h + 1 < H; ++h)
            for (int64_t w = 0; w < W; ++w)
              g[(c * (H - 1) + h) * W + w] = img[(c * H + h + 1) * W + w] - img[(c * H + h) * W + w];
        float* gw = g + n_dh;
        for (int64_t c = 0; c < C; ++c)
          for (int64_t h = 0; h < H; ++h)
            for (int64_t w = 0; w + 1 < W; ++w)
              gw[(c * H + h) * (W - 1) + w] = img[(c * H + h) * W + w + 1] - img[(c * H + h) * W + w];
      }
      f.data = out;
      return f;
    }
  }
  fail(Status::InvalidParameter, "unknown metric kind ", static_cast<int>(metric.kind));
}

bool uses_l1(MetricKind kind) { return kind == MetricKind::L1 || kind == MetricKind::TV1D || kind == MetricKind::TV2D; }

// Columns of b per cache block: about 256 KiB of b rows, so that they stay in L2 while a block of
// rows of a runs against them; a multiple of 16 (every tile width divides it).
int64_t column_block(int64_t width) {
  const int64_t cols = (256 * 1024 / 4) / std::max<int64_t>(width, 1);
  return std::max<int64_t>(16, cols / 16 * 16);
}

// Distances of rows [i0, i0 + rows) of fa against all nb rows of fb, into out (row stride ldo), then
// the metric's final transform. Throws NonFiniteResult on overflow.
void distance_rows(const Features& fa, int64_t i0, int64_t rows, const Features& fb, int64_t nb, MetricKind kind,
                   float* out, int64_t ldo) {
  const int64_t width = fa.width;
  if (width == 0) {  // nothing varies (total variation of length-1 signals): every distance is 0
    for (int64_t r = 0; r < rows; ++r) std::fill(out + r * ldo, out + r * ldo + nb, 0.0f);
    return;
  }
  const bool l1 = uses_l1(kind);
  const int64_t cb = column_block(width);
  bool finite = true;
  for (int64_t j0 = 0; j0 < nb; j0 += cb) {
    const int64_t cols = std::min(cb, nb - j0);
    finite &= kernel().fn(fa.data + i0 * width, width, rows, fb.data + j0 * width, width, cols, width, l1,
                          out + j0, ldo);
  }
  if (!finite)
    fail(Status::NonFiniteResult, "a distance overflowed float32 (outputs of extreme scale); no certificate");
  if (kind == MetricKind::Cosine) {
    // 1 - cos = chord^2 / 2, as smoothgen.metrics._cosine: clamp, square, halve, clamp.
    for (int64_t r = 0; r < rows; ++r) {
      float* row = out + r * ldo;
      for (int64_t j = 0; j < nb; ++j) {
        float c = std::min(std::max(row[j], 0.0f), 2.0f);
        c = c * c;
        c = c * 0.5f;
        row[j] = std::min(std::max(c, 0.0f), 2.0f);
      }
    }
  }
}

// Rows of a per parallel task: enough tasks for every thread (4 per thread), at most 32 rows, a
// multiple of 4 (the tallest register tile).
int64_t row_block(int64_t rows) {
  const int64_t per_task = (rows + 4 * max_threads() - 1) / (4 * max_threads());
  return std::min<int64_t>(32, std::max<int64_t>(4, (per_task + 3) / 4 * 4));
}

void check_buffer(const float* p, int64_t rows, int64_t dim, const char* name) {
  detail::check_not_null(p, name);
  detail::check_count(rows, (std::string("rows of ") + name).c_str());
  detail::checked_elements(rows, dim, name);
}

}  // namespace

double metric_gamma(MetricKind kind) { return kind == MetricKind::Cosine ? 2.0 : 1.0; }

void check_metric(const Metric& m) {
  const int kind = static_cast<int>(m.kind);
  if (kind < 0 || kind > 4) fail(Status::InvalidParameter, "unknown metric kind ", kind);
  if (m.dim < 1) fail(Status::InvalidSize, "dim must be >= 1, got ", m.dim);
  if (m.kind == MetricKind::TV1D) {
    if (m.length < 1 || m.length > m.dim || m.dim % m.length != 0)
      fail(Status::InvalidParameter, "tv1d needs 1 <= length <= dim with dim % length == 0, got length ", m.length,
           " and dim ", m.dim);
  }
  if (m.kind == MetricKind::TV2D) {
    if (m.channels < 1 || m.height < 1 || m.width < 1)
      fail(Status::InvalidParameter, "tv2d needs channels, height, width >= 1, got ", m.channels, ", ", m.height,
           ", ", m.width);
    if (m.height > m.dim || m.width > m.dim || m.channels > m.dim || m.channels * m.height > m.dim ||
        m.channels * m.height * m.width != m.dim)
      fail(Status::InvalidParameter, "tv2d needs channels * height * width == dim, got ", m.channels, " x ",
           m.height, " x ", m.width, " and dim ", m.dim);
  }
}

const char* simd_level() noexcept { return kernel().name; }

void pairwise_distances(const float* a, int64_t n_a, const float* b, int64_t n_b, const Metric& metric, float* out) {
  check_metric(metric);
  check_buffer(a, n_a, metric.dim, "a");
  check_buffer(b, n_b, metric.dim, "b");
  detail::check_not_null(out, "out");
  detail::checked_elements(n_a, n_b, "out");
  const Features fa = make_features(a, n_a, metric, "a");
  const Features fb = make_features(b, n_b, metric, "b");
  const int64_t rb = row_block(n_a);
  ParallelErrors errors;
#pragma omp parallel for schedule(dynamic)
  for (int64_t i0 = 0; i0 < n_a; i0 += rb) {
    errors.run([&] { distance_rows(fa, i0, std::min(rb, n_a - i0), fb, n_b, metric.kind, out + i0 * n_b, n_b); });
  }
  errors.rethrow();
}

void distances_to_center(const float* center, const float* samples, int64_t m, const Metric& metric, float* out) {
  check_metric(metric);
  check_buffer(center, 1, metric.dim, "center");
  check_buffer(samples, m, metric.dim, "samples");
  detail::check_not_null(out, "out");
  const Features fc = make_features(center, 1, metric, "center");
  const Features fs = make_features(samples, m, metric, "samples");
  const int64_t rb = std::max<int64_t>(64, row_block(m));
  ParallelErrors errors;
#pragma omp parallel for schedule(dynamic)
  for (int64_t i0 = 0; i0 < m; i0 += rb) {
    // Samples as rows, the center as the one column: out is [m, 1].
    errors.run([&] { distance_rows(fs, i0, std::min(rb, m - i0), fc, 1, metric.kind, out + i0, 1); });
  }
  errors.rethrow();
}

void kth_smallest_rows(const float* values, int64_t rows, int64_t cols, int64_t k, float* out) {
  detail::check_not_null(values, "values");
  detail::check_not_null(out, "out");
  detail::check_count(rows, "rows");
  detail::check_count(cols, "cols");
  detail::checked_elements(rows, cols, "values");
  if (k < 1 || k > cols) fail(Status::InvalidParameter, "k must lie in 1..", cols, ", got ", k);
  check_inputs_finite(values, rows, cols, "values");
  ParallelErrors errors;
#pragma omp parallel
  {
    std::vector<float> row;
    errors.run([&] { row.resize(static_cast<size_t>(cols)); });
#pragma omp for schedule(dynamic, 16)
    for (int64_t r = 0; r < rows; ++r) {
      errors.run([&] {
        std::copy(values + r * cols, values + (r + 1) * cols, row.begin());
        std::nth_element(row.begin(), row.begin() + (k - 1), row.end());
        out[r] = row[static_cast<size_t>(k - 1)];
      });
    }
  }
  errors.rethrow();
}

namespace {

// Medians of rows of candidates against all samples; with `prune`, only rows that can still be the
// argmin get an exact median (the others are marked in `exact` as false).
void medians_impl(const Features& fc, int64_t n_c, const Features& fs, int64_t n, MetricKind kind, bool prune,
                  float* medians, std::vector<char>& exact) {
  const int64_t k = (n + 1) / 2;
  const int64_t rb = row_block(n_c);
  std::atomic<float> best{std::numeric_limits<float>::infinity()};
  ParallelErrors errors;
#pragma omp parallel
  {
    std::vector<float> block;
    errors.run([&] { block.resize(static_cast<size_t>(detail::checked_elements(rb, n, "distance block"))); });
#pragma omp for schedule(dynamic)
    for (int64_t i0 = 0; i0 < n_c; i0 += rb) {
      errors.run([&] {
        const int64_t rows = std::min(rb, n_c - i0);
        distance_rows(fc, i0, rows, fs, n, kind, block.data(), n);
        for (int64_t r = 0; r < rows; ++r) {
          float* row = block.data() + r * n;
          if (prune) {
            // The k-th smallest exceeds `b` iff fewer than k distances are <= b: such a row cannot be
            // the argmin (its median is strictly above one already found), so skip its selection.
            const float b = best.load(std::memory_order_relaxed);
            int64_t at_most = 0;
            for (int64_t j = 0; j < n; ++j) at_most += row[j] <= b;
            if (at_most < k) {
              exact[static_cast<size_t>(i0 + r)] = 0;
              continue;
            }
          }
          std::nth_element(row, row + (k - 1), row + n);
          const float median = row[k - 1];
          medians[i0 + r] = median;
          exact[static_cast<size_t>(i0 + r)] = 1;
          float current = best.load(std::memory_order_relaxed);
          while (median < current && !best.compare_exchange_weak(current, median, std::memory_order_relaxed)) {
          }
        }
      });
    }
  }
  errors.rethrow();
}

}  // namespace

void median_distances(const float* candidates, int64_t n_c, const float* samples, int64_t n, const Metric& metric,
                      float* out) {
  check_metric(metric);
  check_buffer(candidates, n_c, metric.dim, "candidates");
  check_buffer(samples, n, metric.dim, "samples");
  detail::check_not_null(out, "out");
  const Features fc = make_features(candidates, n_c, metric, "candidates");
  const Features fs = make_features(samples, n, metric, "samples");
  std::vector<char> exact(static_cast<size_t>(n_c), 0);
  medians_impl(fc, n_c, fs, n, metric.kind, /*prune=*/false, out, exact);
}

CenterChoice min_median_center(const float* samples, int64_t n, const Metric& metric, int64_t n_candidates) {
  check_metric(metric);
  check_buffer(samples, n, metric.dim, "samples");
  const int64_t n_c = n_candidates <= 0 ? n : std::min(n_candidates, n);
  const Features fs = make_features(samples, n, metric, "samples");
  std::vector<float> medians(static_cast<size_t>(n_c), std::numeric_limits<float>::infinity());
  std::vector<char> exact(static_cast<size_t>(n_c), 0);
  // The candidates are the first n_c samples: their features are the first rows of fs.
  medians_impl(fs, n_c, fs, n, metric.kind, /*prune=*/true, medians.data(), exact);
  int64_t best = -1;
  for (int64_t i = 0; i < n_c; ++i)  // torch.argmin: the first index of the smallest median
    if (exact[static_cast<size_t>(i)] && (best < 0 || medians[static_cast<size_t>(i)] < medians[static_cast<size_t>(best)]))
      best = i;
  if (best < 0) fail(Status::Internal, "no candidate median was computed");
  return CenterChoice{best, medians[static_cast<size_t>(best)]};
}

CenterCertificate center_certify(const float* selection, int64_t n, const float* check, int64_t n_check,
                                 const float* radius_samples, int64_t m, const Metric& metric,
                                 const CenterParams& params) {
  check_metric(metric);
  check_buffer(selection, n, metric.dim, "selection");
  check_buffer(check, n_check, metric.dim, "check");
  check_buffer(radius_samples, m, metric.dim, "radius_samples");
  // Parameters first, as CenterSmoother.certify checks them before sampling.
  detail::check_finite(params.sigma, "sigma");
  if (!(params.sigma > 0)) fail(Status::InvalidParameter, "sigma must be > 0, got ", params.sigma);
  detail::check_finite(params.eps_in, "eps_in");
  if (!(params.eps_in >= 0)) fail(Status::InvalidParameter, "eps_in must be >= 0, got ", params.eps_in);
  detail::check_finite(params.delta, "delta");
  if (!(params.delta > 0 && params.delta < 0.5))
    fail(Status::InvalidParameter, "delta must lie strictly between 0 and 1/2, got ", params.delta);
  detail::check_alpha(params.alpha1, "alpha1");
  detail::check_alpha(params.alpha2, "alpha2");
  detail::check_noise_tv(params.noise_tv);

  CenterCertificate cert{};
  cert.gamma = metric_gamma(metric.kind);
  cert.beta = 2.0 * cert.gamma;
  // SMOOTH: the center, then the fraction of fresh samples within its radius.
  const CenterChoice choice = min_median_center(selection, n, metric, params.n_candidates);
  cert.center_index = choice.index;
  cert.center_radius = choice.radius;
  const float* center = selection + choice.index * metric.dim;
  std::vector<float> dist(static_cast<size_t>(std::max(n_check, m)));
  distances_to_center(center, check, n_check, metric, dist.data());
  int64_t within = 0;
  for (int64_t i = 0; i < n_check; ++i) within += dist[static_cast<size_t>(i)] <= choice.radius;
  cert.p_within = static_cast<double>(within) / static_cast<double>(n_check);
  // delta1 at min(n, n_check): the center was chosen from n selection samples, checked on n_check.
  const CenterCheck chk =
      center_smoothing_check(cert.p_within, n_check, params.alpha1, params.delta, /*n_select=*/n, params.noise_tv);
  cert.accepted = chk.accepted;
  cert.delta1 = chk.delta1;
  cert.delta2 = chk.delta2;
  cert.candidate_miss = center_candidate_miss(params.delta, params.n_candidates, n, params.noise_tv);
  cert.failure_probability = std::min(1.0, params.alpha1 + params.alpha2 + cert.candidate_miss);
  // CERTIFY: the level, the order statistic, the radius.
  cert.p = center_certify_level(params.eps_in, params.sigma, params.delta);
  cert.q = dkw_quantile_level(cert.p, m, params.alpha2, params.noise_tv);
  cert.k = order_statistic_index(cert.q, m);
  cert.reason = cert.k == 0 ? CenterAbstain::QAboveOne : (!cert.accepted ? CenterAbstain::CheckFailed : CenterAbstain::None);
  cert.r_hat = std::numeric_limits<double>::infinity();
  cert.eps_out = std::numeric_limits<double>::infinity();
  if (cert.reason == CenterAbstain::None) {
    distances_to_center(center, radius_samples, m, metric, dist.data());
    cert.r_hat = order_statistic(dist.data(), m, cert.k);
    cert.eps_out = center_eps_out(cert.gamma, cert.beta, cert.r_hat);
  }
  return cert;
}

}  // namespace smoothgen
