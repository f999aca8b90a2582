// smoothgen C++ core: center smoothing on float32 row-major buffers (docs/theory.md section 2).
//
// Outputs are rows of a row-major float32 buffer [n, dim]. Distances match smoothgen/metrics.py (the
// Python reference) to float32 rounding: every metric is computed in the direct form (no
// |a|^2 + |b|^2 - 2ab shortcut, which cancels catastrophically for outputs that are close together
// and far from the origin), so d(a, a) == 0 exactly. Selections (medians, order statistics, the
// chosen center) are exact: the same k-th smallest value and the same index as the reference, given
// the same distances. Work is spread over OpenMP threads by blocks of rows.
//
// All functions throw smoothgen::Error on a bad argument: null pointer, a size < 1 (or one whose
// buffer would not be addressable), a NaN/Inf input (NonFiniteInput), a zero vector for the cosine
// metric (InvalidInput), or a distance that overflows float32 (NonFiniteResult). Outputs are written
// only to caller-owned buffers of the documented sizes.
#pragma once

#include <cstdint>

#include "smoothgen/error.h"

namespace smoothgen {

/// The built-in metrics of smoothgen/metrics.py that the core computes. Values are part of the C ABI.
enum class MetricKind : int {
  L2 = 0,      ///< Euclidean distance of the rows (gamma 1)
  L1 = 1,      ///< l1 distance of the rows (gamma 1)
  Cosine = 2,  ///< 1 - cos(a, b) = |a/|a| - b/|b||^2 / 2, in [0, 2] (gamma 2)
  TV1D = 3,    ///< total variation of a - b along the last axis (length `length`), summed over the rest
  TV2D = 4,    ///< anisotropic total variation of a - b over [channels, height, width], l1 across channels
};

/// A metric and the shape of one output row.
struct Metric {
  MetricKind kind = MetricKind::L2;
  int64_t dim = 0;       ///< floats per output row (for TV1D: a multiple of length; for TV2D: C*H*W)
  int64_t length = 0;    ///< TV1D only: length of the last axis of an output
  int64_t channels = 0;  ///< TV2D only: C (1 for [H, W] outputs)
  int64_t height = 0;    ///< TV2D only: H
  int64_t width = 0;     ///< TV2D only: W
};

/// The relaxed-triangle constant gamma of a metric (2 for Cosine, else 1).
double metric_gamma(MetricKind kind);

/// Throws Error(InvalidParameter/InvalidSize) unless `metric` describes a consistent output shape.
void check_metric(const Metric& metric);

/// Pairwise distances out[i * n_b + j] = d(a_i, b_j).
/// Shapes: a [n_a, dim], b [n_b, dim], out [n_a, n_b] (caller-owned).
void pairwise_distances(const float* a, int64_t n_a, const float* b, int64_t n_b, const Metric& metric,
                        float* out);

/// Distances out[i] = d(samples_i, center) of m samples to one center (the reduction of CERTIFY).
/// Shapes: center [dim], samples [m, dim], out [m].
void distances_to_center(const float* center, const float* samples, int64_t m, const Metric& metric,
                         float* out);

/// For each row of values [rows, cols], its k-th smallest entry (1-based), by std::nth_element on a
/// private copy of the row (the same value as torch.kthvalue). Shapes: values [rows, cols], out [rows].
void kth_smallest_rows(const float* values, int64_t rows, int64_t cols, int64_t k, float* out);

/// For each candidate, the median of its distances to the n samples: the ceil(n/2)-th smallest,
/// k = (n + 1) / 2, an order statistic (as smoothgen.center.median_distances).
/// Shapes: candidates [n_c, dim], samples [n, dim], out [n_c].
void median_distances(const float* candidates, int64_t n_c, const float* samples, int64_t n,
                      const Metric& metric, float* out);

/// The min-median center of SMOOTH step 1.
struct CenterChoice {
  int64_t index;  ///< row of the center among the samples (first index on ties, as torch.argmin)
  float radius;   ///< r-hat: its median distance to the n samples
};

/// The min-median center: argmin over candidates z of median_j d(z, Z_j). n_candidates <= 0: every
/// sample is a candidate (O(n^2) distances); else the first min(n_candidates, n) samples are
/// (the high-dimensional variant, O(n_c * n)). Rows whose median provably exceeds the best median
/// found so far (fewer than k distances at or below it) skip the selection: the result is the same.
CenterChoice min_median_center(const float* samples, int64_t n, const Metric& metric, int64_t n_candidates = 0);

/// Parameters of a center-smoothing certificate (see smoothgen.CenterSmoother.certify).
struct CenterParams {
  double sigma = 0.0;    ///< noise standard deviation of the samples (> 0)
  double eps_in = 0.0;   ///< input radius to certify (>= 0)
  double delta = 0.05;   ///< tolerance Delta in (0, 1/2)
  double alpha1 = 0.005; ///< error probability of SMOOTH
  double alpha2 = 0.005; ///< error probability of the radius
  /// <= 0 or >= n: exact min-median center over all n selection samples; 1 <= n_candidates < n: the
  /// high-dimensional variant (center among the first n_candidates samples), whose miss probability
  /// center_candidate_miss(...) is added to the certificate's failure probability.
  int64_t n_candidates = 0;
  /// Per-copy total-variation distance between the sampler that drew the samples and the exact
  /// Gaussian N(0, sigma^2 I), a finite number in [0, 1) (0: exact sampler). Charged in delta1, in the
  /// candidate-miss probability and in the quantile level q.
  double noise_tv = 0.0;
};

/// Why a center certificate abstains. Values are part of the C ABI.
enum class CenterAbstain : int {
  None = 0,         ///< certified
  QAboveOne = 1,    ///< q > 1: eps_in is too large for sigma and m ("q > 1")
  CheckFailed = 2,  ///< the acceptance check of SMOOTH failed ("center check failed")
};

/// A center-smoothing certificate, field for field as smoothgen.CenterCertificate.
struct CenterCertificate {
  int64_t center_index;  ///< row of the center among the selection samples
  float center_radius;   ///< r-hat of SMOOTH (median distance of the center)
  double p_within;       ///< fraction of the check samples within center_radius of the center
  /// terms of the acceptance check: delta1 = sqrt(ln(2/alpha1) / (2 min(n, n_check))) + noise_tv,
  /// delta2 = 1/2 - (p_within - delta1) (center_smoothing_check)
  double delta1, delta2;
  bool accepted;         ///< the acceptance check passed: max(delta1, delta2) <= delta
  double p;              ///< Phi(Phi^-1(1/2 + delta) + eps_in / sigma)
  double q;              ///< p + noise_tv + sqrt(ln(1/alpha2) / (2m))
  int64_t k;             ///< ceil(q m), 0 when q > 1
  CenterAbstain reason;  ///< None when certified
  double r_hat;          ///< k-th smallest distance of the radius samples to the center (+inf when abstaining)
  double eps_out;        ///< gamma (1 + beta) r_hat (+inf when abstaining)
  double gamma;          ///< the metric's relaxed-triangle constant
  double beta;           ///< 2 gamma (min-median center)
  /// (1/2 - delta + noise_tv)^n_candidates (capped at 1) when 1 <= n_candidates < n, else 0: the
  /// probability that no candidate of the high-dimensional variant lies in the ball of mass
  /// >= 1/2 + delta (center_candidate_miss)
  double candidate_miss;
  /// min(1, alpha1 + alpha2 + candidate_miss): the certificate holds with probability >= 1 - this
  double failure_probability;
};

/// CERTIFY of center smoothing from three disjoint buffers of sampled outputs: `selection` [n, dim]
/// chooses the center, `check` [n_check, dim] runs the acceptance check, `radius_samples` [m, dim]
/// give the certified radius. The samples are assumed to be i.i.d. draws of f(x + eps) from a sampler
/// within params.noise_tv (total variation, per copy) of eps ~ N(0, sigma^2 I), the three buffers
/// independent of each other. The acceptance check's delta1 is Hoeffding's two-sided deviation at
/// min(n, n_check) (both the selection and the check sample enter the proof) plus noise_tv. With
/// probability >= 1 - failure_probability the certificate is correct. Returns a certificate that may
/// abstain; throws only on bad arguments.
CenterCertificate center_certify(const float* selection, int64_t n, const float* check, int64_t n_check,
                                 const float* radius_samples, int64_t m, const Metric& metric,
                                 const CenterParams& params);

/// Which SIMD kernels the distance code uses: "avx512", "avx2" or "generic". The environment variable
/// SMOOTHGEN_SIMD (avx512|avx2|generic) lowers the choice, for tests and comparisons.
const char* simd_level() noexcept;

}  // namespace smoothgen
