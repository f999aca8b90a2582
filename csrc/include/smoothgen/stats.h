// smoothgen C++ core: the statistics behind every certificate (docs/theory.md sections 1, 2 and 6).
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

/// One-sided (1 - alpha) Clopper-Pearson lower bound: Beta.ppf(alpha; k, n - k + 1), 0 when k = 0,
/// capped at nextafter(1, 0) (the largest double below 1): the exact bound is < 1 for every finite n, but
/// it rounds to 1 for huge n (k = n = 1e18: alpha^(1/n) = 1 - 7e-18), which would make Cohen's radius
/// infinite. Requires 0 <= k <= n, n >= 1, 0 < alpha < 1.
double clopper_pearson_lower(int64_t k, int64_t n, double alpha);

/// One-sided (1 - alpha) Clopper-Pearson upper bound: Beta.ppf(1 - alpha; k + 1, n - k), 1 when k = n.
double clopper_pearson_upper(int64_t k, int64_t n, double alpha);

/// Two-sided exact binomial test p-value of k successes out of n at success probability p, computed as
/// scipy.stats.binomtest does (the tail on the other side of the mode holds the outcomes whose
/// probability is at most pmf(k) * (1 + 1e-7)). Requires 0 <= k <= n, n >= 1, 0 < p < 1.
double binomial_test_pvalue(int64_t k, int64_t n, double p = 0.5);

/// Hoeffding / DKW deviation sqrt(ln(1/alpha) / (2n)), or sqrt(ln(2/alpha) / (2n)) when two_sided.
double hoeffding_radius(int64_t n, double alpha, bool two_sided = false);

/// max(0, mean - hoeffding_radius(n, alpha)): one-sided lower bound on the mean of [0, 1] variables,
/// capped at nextafter(1, 0): a lower bound of exactly 1 would claim certainty that finitely many samples
/// cannot give (it only arises by rounding: huge n with alpha close to 1).
double hoeffding_lower(double mean, int64_t n, double alpha);

/// min(1, mean + hoeffding_radius(n, alpha)): one-sided upper bound on the mean of [0, 1] variables.
double hoeffding_upper(double mean, int64_t n, double alpha);

/// q = p + noise_tv + sqrt(ln(1/alpha) / (2m)): the level at which center smoothing reads the empirical
/// CDF of m samples (one-sided DKW). noise_tv is the per-copy total-variation distance between the
/// sampler that drew the m samples and the exact Gaussian N(0, sigma^2 I) (0 for an exact sampler): the
/// sampled CDF can sit up to noise_tv below the exact one at every radius. Requires 0 <= p <= 1,
/// m >= 1, 0 < alpha < 1 and a finite noise_tv in [0, 1).
double dkw_quantile_level(double p, int64_t m, double alpha, double noise_tv = 0.0);

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

/// Largest radius n samples can certify: sigma * Phi^-1(alpha^(1/n)), with alpha^(1/n) (the Clopper-Pearson
/// lower bound at k = n) capped at nextafter(1, 0) as in clopper_pearson_lower, so the radius is finite.
double max_certifiable_radius(double sigma, int64_t n, double alpha);

/// Result of center smoothing's acceptance check.
struct CenterCheck {
  bool accepted;  ///< max(delta1, delta2) <= delta
  double delta1;  ///< sqrt(ln(2/alpha1) / (2 min(n, n_select))) + noise_tv
  double delta2;  ///< 1/2 - (p - delta1)
};

/// Acceptance check of center smoothing's SMOOTH step (Kumar & Goldstein 2021; docs/theory.md section 2):
/// accepted iff max(delta1, delta2) <= delta, with
///   delta1 = sqrt(ln(2/alpha1) / (2 min(n, n_select))) + noise_tv,   delta2 = 1/2 - (p - delta1).
/// p is the fraction of n fresh CHECK samples within r-hat of the center; n_select is the number of
/// SELECTION samples the center and r-hat were chosen from. The proof needs both sizes: at a neighbouring
/// input, more than half of the n_select selection samples must fall in a ball of mass >= 1/2 + delta
/// (Hoeffding at n_select), and the check's one-sided Hoeffding bound holds at n. Taking delta1 from the
/// check alone accepted centers chosen from a handful of samples. noise_tv is the per-copy total-variation
/// distance of the sampler from N(0, sigma^2 I) (0 for an exact sampler): every empirical fraction can be
/// off by that much more. Requires 0 < delta < 1/2, 0 <= p <= 1, n >= 1, n_select >= 1,
/// 0 < alpha1 < 1 and a finite noise_tv in [0, 1).
CenterCheck center_smoothing_check(double p, int64_t n, double alpha1, double delta, int64_t n_select,
                                   double noise_tv = 0.0);

/// Probability that the high-dimensional variant of center smoothing misses: that none of its
/// n_candidates i.i.d. candidates (the first samples of the n selection samples) falls in the ball of
/// mass >= 1/2 + delta, so that the beta = 2 gamma approximation of the minimum enclosing ball fails.
/// (1/2 - delta + noise_tv)^n_candidates, capped at 1, when 1 <= n_candidates < n; 0 otherwise
/// (n_candidates <= 0 or >= n: every sample is a candidate, the exact variant, nothing to charge).
/// It adds to the certificate's failure probability alpha1 + alpha2. Requires 0 < delta < 1/2, n >= 1
/// and a finite noise_tv in [0, 1).
double center_candidate_miss(double delta, int64_t n_candidates, int64_t n, double noise_tv = 0.0);

/// p = Phi(Phi^-1(1/2 + delta) + eps_in / sigma): the mass the certified ball must hold.
double center_certify_level(double eps_in, double sigma, double delta);

/// Certified output radius gamma * (1 + beta) * r_hat. Requires gamma >= 1, beta >= 1, r_hat >= 0.
double center_eps_out(double gamma, double beta, double r_hat);

}  // namespace smoothgen
