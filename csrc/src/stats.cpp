// Statistics of the certificates; the formulas of smoothgen/stats.py, the special functions of Boost.Math.
#include "smoothgen/stats.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>
#include <vector>

#include <boost/math/distributions/beta.hpp>
#include <boost/math/distributions/binomial.hpp>
#include <boost/math/distributions/normal.hpp>

#include "checks.h"

namespace smoothgen {
namespace {

using detail::check_alpha;
using detail::check_count;
using detail::check_finite;
using detail::check_noise_tv;
using detail::fail;

// The largest double below 1: the cap of every lower confidence bound on a probability. The exact bounds
// are < 1 for any finite sample, but can round to 1 (then Cohen's radius would be +inf).
const double kBelowOne = std::nextafter(1.0, 0.0);

// SciPy's precision policy for its Boost-backed distributions (scipy.special's StatsPolicy): no
// promotion of double to long double, so that both compute the same algorithm in the same precision.
// Errors keep Boost's default (throw); every call below is wrapped and reported as Status::Internal.
using Policy = boost::math::policies::policy<boost::math::policies::promote_float<false>,
                                             boost::math::policies::promote_double<false>,
                                             boost::math::policies::max_root_iterations<400>,
                                             boost::math::policies::discrete_quantile<
                                                 boost::math::policies::integer_round_up>>;
using Beta = boost::math::beta_distribution<double, Policy>;
using Binomial = boost::math::binomial_distribution<double, Policy>;
using Normal = boost::math::normal_distribution<double, Policy>;

template <class F>
double guarded(const char* what, F&& f) {
  try {
    return f();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail(Status::Internal, what, ": ", e.what());
  }
}

void check_binomial(int64_t k, int64_t n) {
  if (n < 1 || k < 0 || k > n)
    fail(Status::InvalidParameter, "need 0 <= k <= n and n >= 1, got k=", k, ", n=", n);
}

void check_probability(double p, const char* name) {
  check_finite(p, name);
  if (!(p >= 0.0 && p <= 1.0)) fail(Status::InvalidParameter, name, " must lie in [0, 1], got ", p);
}

void check_sigma(double sigma) {
  check_finite(sigma, "sigma");
  if (!(sigma > 0.0)) fail(Status::InvalidParameter, "sigma must be a finite number > 0, got ", sigma);
}

void check_delta(double delta) {
  check_finite(delta, "delta");
  if (!(delta > 0.0 && delta < 0.5))
    fail(Status::InvalidParameter, "delta must lie strictly between 0 and 1/2, got ", delta);
}

// The binomial distribution of scipy.stats.binom, including its values outside the support.
struct BinomialTerms {
  Binomial dist;
  int64_t n;
  double pmf(int64_t x) const {
    if (x < 0 || x > n) return 0.0;
    return boost::math::pdf(dist, static_cast<double>(x));
  }
  double cdf(int64_t x) const {
    if (x < 0) return 0.0;
    if (x >= n) return 1.0;
    return boost::math::cdf(dist, static_cast<double>(x));
  }
  double sf(int64_t x) const {
    if (x < 0) return 1.0;
    if (x >= n) return 0.0;
    return boost::math::cdf(boost::math::complement(dist, static_cast<double>(x)));
  }
};

// scipy.stats._binomtest._binary_search_for_binom_tst: the i in [lo, hi] with a(i) <= d < a(i + 1).
template <class A>
int64_t binary_search_binom(const A& a, double d, int64_t lo, int64_t hi) {
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    const double midval = a(mid);
    if (midval < d) {
      lo = mid + 1;
    } else if (midval > d) {
      hi = mid - 1;
    } else {
      return mid;
    }
  }
  return a(lo) <= d ? lo : lo - 1;
}

template <class T>
T select_kth(const T* values, int64_t size, int64_t k) {
  detail::check_not_null(values, "values");
  check_count(size, "size");
  if (k < 1 || k > size) fail(Status::InvalidParameter, "order statistic index ", k, " outside 1..", size);
  std::vector<T> copy(values, values + size);
  for (int64_t i = 0; i < size; ++i)
    if (!std::isfinite(copy[static_cast<size_t>(i)]))
      fail(Status::NonFiniteInput, "values[", i, "] is not finite");
  std::nth_element(copy.begin(), copy.begin() + (k - 1), copy.end());
  return copy[static_cast<size_t>(k - 1)];
}

}  // namespace

double clopper_pearson_lower(int64_t k, int64_t n, double alpha) {
  check_binomial(k, n);
  check_alpha(alpha);
  if (k == 0) return 0.0;
  const double lower = guarded("clopper_pearson_lower", [&] {
    return boost::math::quantile(Beta(static_cast<double>(k), static_cast<double>(n - k + 1)), alpha);
  });
  return std::min(lower, kBelowOne);
}

double clopper_pearson_upper(int64_t k, int64_t n, double alpha) {
  check_binomial(k, n);
  check_alpha(alpha);
  if (k == n) return 1.0;
  return guarded("clopper_pearson_upper", [&] {
    return boost::math::quantile(Beta(static_cast<double>(k + 1), static_cast<double>(n - k)), 1.0 - alpha);
  });
}

double binomial_test_pvalue(int64_t k, int64_t n, double p) {
  check_binomial(k, n);
  check_finite(p, "p");
  if (!(p > 0.0 && p < 1.0)) fail(Status::InvalidParameter, "p must lie strictly between 0 and 1, got ", p);
  return guarded("binomial_test_pvalue", [&] {
    const BinomialTerms b{Binomial(static_cast<double>(n), p), n};
    const double d = b.pmf(k);
    const double rerr = 1.0 + 1e-7;
    const double pn = p * static_cast<double>(n);
    const double kd = static_cast<double>(k);
    double pval;
    if (kd == pn) {
      pval = 1.0;
    } else if (kd < pn) {
      const int64_t lo = static_cast<int64_t>(std::ceil(pn));
      const int64_t ix = binary_search_binom([&](int64_t x) { return -b.pmf(x); }, -d * rerr, lo, n);
      const int64_t y = n - ix + ((d * rerr == b.pmf(ix)) ? 1 : 0);
      pval = b.cdf(k) + b.sf(n - y);
    } else {
      const int64_t hi = static_cast<int64_t>(std::floor(pn));
      const int64_t ix = binary_search_binom([&](int64_t x) { return b.pmf(x); }, d * rerr, 0, hi);
      const int64_t y = ix + 1;
      pval = b.cdf(y - 1) + b.sf(k - 1);
    }
    return std::min(1.0, pval);
  });
}

double hoeffding_radius(int64_t n, double alpha, bool two_sided) {
  if (n < 1) fail(Status::InvalidParameter, "n must be an integer >= 1, got ", n);
  check_alpha(alpha);
  return std::sqrt(std::log((two_sided ? 2.0 : 1.0) / alpha) / (2.0 * static_cast<double>(n)));
}

double hoeffding_lower(double mean, int64_t n, double alpha) {
  check_finite(mean, "mean");
  return std::min(std::max(0.0, mean - hoeffding_radius(n, alpha)), kBelowOne);
}

double hoeffding_upper(double mean, int64_t n, double alpha) {
  check_finite(mean, "mean");
  return std::min(1.0, mean + hoeffding_radius(n, alpha));
}

double dkw_quantile_level(double p, int64_t m, double alpha, double noise_tv) {
  check_probability(p, "p");
  check_noise_tv(noise_tv);
  return p + noise_tv + hoeffding_radius(m, alpha);
}

int64_t order_statistic_index(double q, int64_t m) {
  if (m < 1) fail(Status::InvalidParameter, "m must be an integer >= 1, got ", m);
  check_finite(q, "q");
  if (q < 0) fail(Status::InvalidParameter, "q must be a finite number >= 0, got ", q);
  if (q > 1.0) return 0;
  // Plain ceil: rounding q*m upward can only pick a larger (more conservative) order statistic.
  const double k = std::ceil(q * static_cast<double>(m));
  if (k >= static_cast<double>(m)) return m;  // also keeps the conversion below in range
  return std::max<int64_t>(1, static_cast<int64_t>(k));
}

float order_statistic(const float* values, int64_t size, int64_t k) { return select_kth(values, size, k); }
double order_statistic(const double* values, int64_t size, int64_t k) { return select_kth(values, size, k); }

double normal_cdf(double z) {
  check_finite(z, "z");
  return guarded("normal_cdf", [&] { return boost::math::cdf(Normal(), z); });
}

double normal_ppf(double p) {
  check_probability(p, "p");
  if (p == 0.0) return -std::numeric_limits<double>::infinity();
  if (p == 1.0) return std::numeric_limits<double>::infinity();
  return guarded("normal_ppf", [&] { return boost::math::quantile(Normal(), p); });
}

double cohen_radius(double sigma, double p_lower) {
  check_sigma(sigma);
  check_probability(p_lower, "p_lower");
  if (p_lower <= 0.5) return 0.0;
  return sigma * normal_ppf(p_lower);
}

double max_certifiable_radius(double sigma, int64_t n, double alpha) {
  if (n < 1) fail(Status::InvalidParameter, "n must be an integer >= 1, got ", n);
  check_alpha(alpha);
  // alpha^(1/n) is clopper_pearson_lower(n, n, alpha): capped below 1 like it.
  return cohen_radius(sigma, std::min(std::pow(alpha, 1.0 / static_cast<double>(n)), kBelowOne));
}

CenterCheck center_smoothing_check(double p, int64_t n, double alpha1, double delta, int64_t n_select,
                                   double noise_tv) {
  check_delta(delta);
  check_probability(p, "p");
  if (n < 1) fail(Status::InvalidParameter, "n must be an integer >= 1, got ", n);
  if (n_select < 1) fail(Status::InvalidParameter, "n_select must be an integer >= 1, got ", n_select);
  check_noise_tv(noise_tv);
  // Hoeffding at the smaller of the two samples: the selection sample must put more than half of its
  // points in the ball of mass >= 1/2 + delta at a neighbouring input, and the check must hold at n.
  const double delta1 = hoeffding_radius(std::min(n, n_select), alpha1, /*two_sided=*/true) + noise_tv;
  const double delta2 = 0.5 - (p - delta1);
  return CenterCheck{std::max(delta1, delta2) <= delta, delta1, delta2};
}

double center_candidate_miss(double delta, int64_t n_candidates, int64_t n, double noise_tv) {
  check_delta(delta);
  if (n < 1) fail(Status::InvalidParameter, "n must be an integer >= 1, got ", n);
  check_noise_tv(noise_tv);
  if (n_candidates < 1 || n_candidates >= n) return 0.0;  // the exact variant: every sample is a candidate
  // Each candidate lands outside the ball of mass >= 1/2 + delta (under the exact Gaussian) with
  // probability <= 1/2 - delta, and <= 1/2 - delta + noise_tv under the caller's sampler.
  return std::min(1.0, std::pow(0.5 - delta + noise_tv, static_cast<double>(n_candidates)));
}

double center_certify_level(double eps_in, double sigma, double delta) {
  check_delta(delta);
  check_finite(eps_in, "eps_in");
  if (!(eps_in >= 0.0)) fail(Status::InvalidParameter, "eps_in must be a finite number >= 0, got ", eps_in);
  check_sigma(sigma);
  return normal_cdf(normal_ppf(0.5 + delta) + eps_in / sigma);
}

double center_eps_out(double gamma, double beta, double r_hat) {
  check_finite(gamma, "gamma");
  check_finite(beta, "beta");
  check_finite(r_hat, "r_hat");
  if (!(gamma >= 1.0 && beta >= 1.0 && r_hat >= 0.0))
    fail(Status::InvalidParameter, "need gamma >= 1, beta >= 1, r_hat >= 0, got ", gamma, ", ", beta, ", ", r_hat);
  // R̂ = 0 certifies ε2 = 0 whatever γ and β are; the product alone would give inf·0 = NaN once
  // γ·(1 + β) overflows. Any other overflow gives +inf, a vacuous but sound radius.
  if (r_hat == 0.0) return 0.0;
  return gamma * (1.0 + beta) * r_hat;
}

}  // namespace smoothgen
