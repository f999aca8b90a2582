// smoothgen C++ core: the statistics behind every certificate (THEORY.md sections 1, 2 and 6).
//
// Each function computes exactly the formula of its namesake in smoothgen/stats.py (the Python
// reference), with the special functions from Boost.Math under SciPy's precision policy (no promotion
// of double to long double), so that the two agree to about 1e-15 relative. Arguments are checked as
// the Python reference checks them; in addition every floating-point argument must be finite. A bad
// argument throws smoothgen::Error (see error.h); nothing here allocates except order_statistic.
#pragma once

#include <cstdint>

#include "smoothgen/error.h"

namespace smoothgen {

/// One-sided (1 - alpha) Clopper-Pearson lower bound: Beta.ppf(alpha; k, n - k + 1), 0 when k = 0.
/// Requires 0 <= k <= n, n >= 1, 0 < alpha < 1.
double clopper_pearson_lower(int64_t k, int64_t n, double alpha);

/// One-sided (1 - alpha) Clopper-Pearson upper bound: Beta.ppf(1 - alpha; k + 1, n - k), 1 when k = n.
double clopper_pearson_upper(int64_t k, int64_t n, double alpha);

/// Two-sided exact binomial test p-value of k successes out of n at success probability p, computed as
/// scipy.stats.binomtest does (the tail on the other side of the mode holds the outcomes whose
/// probability is at most pmf(k) * (1 + 1e-7)). Requires 0 <= k <= n, n >= 1, 0 < p < 1.
double binomial_test_pvalue(int64_t k, int64_t n, double p = 0.5);

/// Hoeffding / DKW deviation sqrt(ln(1/alpha) / (2n)), or sqrt(ln(2/alpha) / (2n)) when two_sided.
double hoeffding_radius(int64_t n, double alpha, bool two_sided = false);

/// max(0, mean - hoeffding_radius(n, alpha)): one-sided lower bound on the mean of [0, 1] variables.
double hoeffding_lower(double mean, int64_t n, double alpha);

/// min(1, mean + hoeffding_radius(n, alpha)): one-sided upper bound on the mean of [0, 1] variables.
double hoeffding_upper(double mean, int64_t n, double alpha);

/// q = p + sqrt(ln(1/alpha) / (2m)): the level at which center smoothing reads the empirical CDF.
/// Requires 0 <= p <= 1.
double dkw_quantile_level(double p, int64_t m, double alpha);

/// 1-based index k = ceil(q * m) (plain ceil, clamped to [1, m]) of the order statistic that
/// upper-bounds the q-quantile of m values, or 0 when q > 1 (no order statistic does: abstain).
/// Requires m >= 1 and q >= 0.
int64_t order_statistic_index(double q, int64_t m);

/// The k-th smallest (1-based) of `size` values, by selection (std::nth_element) on a private copy;
/// `values` is not modified. Requires 1 <= k <= size and finite values.
float order_statistic(const float* values, int64_t size, int64_t k);
double order_statistic(const double* values, int64_t size, int64_t k);

/// Standard normal CDF Phi(z).
double normal_cdf(double z);

/// Standard normal quantile Phi^-1(p) for 0 <= p <= 1 (-inf at 0, +inf at 1).
double normal_ppf(double p);

/// Cohen et al.'s certified radius sigma * Phi^-1(p_lower), or 0 when p_lower <= 1/2 (+inf at 1).
/// Requires sigma > 0 and 0 <= p_lower <= 1.
double cohen_radius(double sigma, double p_lower);

/// Largest radius n samples can certify: sigma * Phi^-1(alpha^(1/n)).
double max_certifiable_radius(double sigma, int64_t n, double alpha);

/// Result of center smoothing's acceptance check.
struct CenterCheck {
  bool accepted;  ///< max(delta1, delta2) <= delta
  double delta1;  ///< sqrt(ln(2/alpha1) / (2n))
  double delta2;  ///< 1/2 - (p - delta1)
};

/// Acceptance check of center smoothing's SMOOTH step (Kumar & Goldstein 2021; THEORY.md section 2).
/// Requires 0 < delta < 1/2, 0 <= p <= 1, n >= 1, 0 < alpha1 < 1.
CenterCheck center_smoothing_check(double p, int64_t n, double alpha1, double delta);

/// p = Phi(Phi^-1(1/2 + delta) + eps_in / sigma): the mass the certified ball must hold.
double center_certify_level(double eps_in, double sigma, double delta);

/// Certified output radius gamma * (1 + beta) * r_hat. Requires gamma >= 1, beta >= 1, r_hat >= 0.
double center_eps_out(double gamma, double beta, double r_hat);

}  // namespace smoothgen
