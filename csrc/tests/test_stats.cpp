// Statistics against values computed with SciPy (smoothgen/stats.py's reference) and their edge cases.
#include <cmath>
#include <limits>
#include <vector>

#include "harness.h"
#include "smoothgen/cohen.h"
#include "smoothgen/stats.h"

using smoothgen::Status;

TEST(clopper_pearson_matches_scipy) {
  CHECK_NEAR(smoothgen::clopper_pearson_lower(5, 10, 0.001), 0.08981318981185427, 1e-12);
  CHECK_NEAR(smoothgen::clopper_pearson_upper(5, 10, 0.001), 0.9101868101881457, 1e-12);
  CHECK_NEAR(smoothgen::clopper_pearson_lower(99000, 100000, 0.001), 0.9889893403774748, 1e-12);
  CHECK(smoothgen::clopper_pearson_lower(0, 10, 0.05) == 0.0);
  CHECK(smoothgen::clopper_pearson_upper(10, 10, 0.05) == 1.0);
  // k = n: Beta.ppf(alpha; n, 1) = alpha^(1/n) exactly.
  CHECK_NEAR(smoothgen::clopper_pearson_lower(100, 100, 0.01), std::pow(0.01, 1.0 / 100), 1e-13);
}

TEST(binomial_test_matches_scipy_binomtest) {
  CHECK_NEAR(smoothgen::binomial_test_pvalue(60, 100, 0.5), 0.05688793364098089, 1e-12);
  CHECK_NEAR(smoothgen::binomial_test_pvalue(3, 20, 0.3), 0.22041826738070913, 1e-12);
  CHECK_NEAR(smoothgen::binomial_test_pvalue(17, 20, 0.3), 5.426947467863097e-07, 1e-12);
  CHECK(smoothgen::binomial_test_pvalue(50, 100, 0.5) == 1.0);
  CHECK_NEAR(smoothgen::binomial_test_pvalue(100, 100, 0.5), 2 * std::pow(0.5, 100), 1e-9);
}

TEST(normal_and_levels_match_scipy) {
  CHECK_NEAR(smoothgen::normal_cdf(-3.5), 0.00023262907903552502, 1e-12);
  CHECK_NEAR(smoothgen::normal_ppf(0.975), 1.959963984540054, 1e-12);
  CHECK_NEAR(smoothgen::normal_ppf(1e-10), -6.361340902404056, 1e-12);
  CHECK(smoothgen::normal_ppf(0.0) == -std::numeric_limits<double>::infinity());
  CHECK(smoothgen::normal_ppf(1.0) == std::numeric_limits<double>::infinity());
  CHECK_NEAR(smoothgen::center_certify_level(0.1, 0.25, 0.05), 0.7004382377111, 1e-12);
  CHECK_NEAR(smoothgen::max_certifiable_radius(0.25, 100000, 0.001), 0.9528641408474786, 1e-12);
  CHECK(smoothgen::cohen_radius(0.5, 0.5) == 0.0);
  CHECK(smoothgen::cohen_radius(0.5, 1.0) == std::numeric_limits<double>::infinity());
}

TEST(hoeffding_dkw_and_order_statistics) {
  CHECK_NEAR(smoothgen::hoeffding_radius(100, 0.05), std::sqrt(std::log(20.0) / 200), 1e-15);
  CHECK_NEAR(smoothgen::hoeffding_radius(100, 0.05, true), std::sqrt(std::log(40.0) / 200), 1e-15);
  CHECK(smoothgen::hoeffding_lower(0.01, 100, 0.05) == 0.0);
  CHECK(smoothgen::hoeffding_upper(0.99, 100, 0.05) == 1.0);
  CHECK_NEAR(smoothgen::dkw_quantile_level(0.9, 10000, 0.005), 0.9 + std::sqrt(std::log(200.0) / 20000), 1e-15);
  CHECK(smoothgen::order_statistic_index(0.5, 5) == 3);
  CHECK(smoothgen::order_statistic_index(0.61, 5) == 4);
  CHECK(smoothgen::order_statistic_index(1.0, 5) == 5);
  CHECK(smoothgen::order_statistic_index(1.0000001, 5) == 0);
  CHECK(smoothgen::order_statistic_index(0.0, 5) == 1);
  CHECK(smoothgen::order_statistic_index(1.0, std::numeric_limits<int64_t>::max()) ==
        std::numeric_limits<int64_t>::max());
  const std::vector<float> values{5, 1, 4, 2, 3};
  CHECK(smoothgen::order_statistic(values.data(), 5, 3) == 3.0f);
  CHECK(smoothgen::order_statistic(values.data(), 5, 4) == 4.0f);
  CHECK(values[0] == 5.0f);  // the input is not reordered
}

TEST(center_check_and_radius) {
  const smoothgen::CenterCheck c = smoothgen::center_smoothing_check(0.9, 10000, 0.005, 0.05, 10000);
  CHECK(c.accepted);
  CHECK_NEAR(c.delta1, std::sqrt(std::log(2 / 0.005) / 20000), 1e-15);
  CHECK_NEAR(c.delta2, 0.5 - (0.9 - c.delta1), 1e-15);
  CHECK(!smoothgen::center_smoothing_check(0.4, 10000, 0.005, 0.05, 10000).accepted);
  CHECK(!smoothgen::center_smoothing_check(0.9, 300, 0.005, 0.05, 300).accepted);  // delta1 > delta
  CHECK(smoothgen::center_eps_out(2.0, 4.0, 1.5) == 15.0);
  // R̂ = 0 certifies 0 even when γ·(1 + β) overflows (found by the fuzzer: inf·0 was NaN).
  CHECK(smoothgen::center_eps_out(1e300, 1e300, 0.0) == 0.0);
  CHECK(smoothgen::center_eps_out(1e300, 1e300, 1.0) == std::numeric_limits<double>::infinity());
}

TEST(center_check_takes_delta1_from_the_smaller_sample) {
  // A center chosen from 5 selection samples and checked on 10 000: the proof needs Hoeffding at the
  // selection size too, so delta1 is the deviation at 5 samples (0.77 > delta) and the check fails.
  // (It used to take delta1 from the check alone and accept.)
  const smoothgen::CenterCheck few = smoothgen::center_smoothing_check(0.9, 10000, 0.005, 0.05, /*n_select=*/5);
  CHECK(few.delta1 == smoothgen::hoeffding_radius(5, 0.005, true));
  CHECK(few.delta2 == 0.5 - (0.9 - few.delta1));
  CHECK(!few.accepted);
  // The other way round: a small check sample bounds delta1 as before.
  CHECK(smoothgen::center_smoothing_check(0.9, 5, 0.005, 0.05, 10000).delta1 == smoothgen::hoeffding_radius(5, 0.005, true));
  // A larger selection than check changes nothing.
  const smoothgen::CenterCheck big = smoothgen::center_smoothing_check(0.9, 10000, 0.005, 0.05, 1000000);
  CHECK(big.accepted && big.delta1 == smoothgen::hoeffding_radius(10000, 0.005, true));
  CHECK_THROWS(smoothgen::center_smoothing_check(0.9, 10000, 0.005, 0.05, 0), Status::InvalidParameter);
  CHECK_THROWS(smoothgen::center_smoothing_check(0.9, 0, 0.005, 0.05, 10000), Status::InvalidParameter);
}

TEST(noise_tv_is_charged_in_delta1_and_q) {
  const double tv = 0.04;
  const smoothgen::CenterCheck c = smoothgen::center_smoothing_check(0.9, 10000, 0.005, 0.05, 10000, tv);
  CHECK(c.delta1 == smoothgen::hoeffding_radius(10000, 0.005, true) + tv);
  CHECK(c.delta2 == 0.5 - (0.9 - c.delta1));
  CHECK(!c.accepted);  // 0.0173 + 0.04 > 0.05; accepted with an exact sampler (center_check_and_radius)
  CHECK(smoothgen::center_smoothing_check(0.9, 10000, 0.005, 0.05, 10000, 0.0).accepted);
  CHECK(smoothgen::dkw_quantile_level(0.9, 10000, 0.005, 0.02) == 0.9 + 0.02 + smoothgen::hoeffding_radius(10000, 0.005));
  CHECK(smoothgen::dkw_quantile_level(0.9, 10000, 0.005, 0.0) == smoothgen::dkw_quantile_level(0.9, 10000, 0.005));
  // noise_tv must be a finite number in [0, 1).
  for (double bad : {-1e-12, 1.0, 1.5}) {
    CHECK_THROWS(smoothgen::dkw_quantile_level(0.9, 100, 0.005, bad), Status::InvalidParameter);
    CHECK_THROWS(smoothgen::center_smoothing_check(0.9, 100, 0.005, 0.05, 100, bad), Status::InvalidParameter);
    CHECK_THROWS(smoothgen::center_candidate_miss(0.05, 3, 100, bad), Status::InvalidParameter);
  }
  for (double bad : {std::nan(""), std::numeric_limits<double>::infinity()}) {
    CHECK_THROWS(smoothgen::dkw_quantile_level(0.9, 100, 0.005, bad), Status::NonFiniteInput);
    CHECK_THROWS(smoothgen::center_smoothing_check(0.9, 100, 0.005, 0.05, 100, bad), Status::NonFiniteInput);
    CHECK_THROWS(smoothgen::center_candidate_miss(0.05, 3, 100, bad), Status::NonFiniteInput);
  }
}

TEST(candidate_miss_of_the_high_dimensional_variant) {
  // (1/2 - delta + noise_tv)^n_candidates, computed as written.
  const double base = 0.5 - 0.05, base_tv = 0.5 - 0.05 + 0.1;
  CHECK(smoothgen::center_candidate_miss(0.05, 30, 10000) == std::pow(base, 30.0));
  CHECK_NEAR(smoothgen::center_candidate_miss(0.05, 30, 10000), 3.9479842665806633e-11, 1e-12);
  CHECK(smoothgen::center_candidate_miss(0.05, 1, 10000) == base);
  CHECK(smoothgen::center_candidate_miss(0.05, 30, 10000, 0.1) == std::pow(base_tv, 30.0));
  CHECK(smoothgen::center_candidate_miss(0.05, 9999, 10000) == std::pow(base, 9999.0));
  // The exact variant (no candidates, or every sample one): nothing to charge.
  for (int64_t k : {int64_t{0}, int64_t{-3}, int64_t{10000}, int64_t{20000}})
    CHECK(smoothgen::center_candidate_miss(0.05, k, 10000, 0.1) == 0.0);
  // A probability: capped at 1 when noise_tv pushes the base past 1.
  CHECK(smoothgen::center_candidate_miss(0.05, 3, 100, 0.9) == 1.0);
  CHECK_THROWS(smoothgen::center_candidate_miss(0.5, 3, 100), Status::InvalidParameter);
  CHECK_THROWS(smoothgen::center_candidate_miss(0.05, 3, 0), Status::InvalidParameter);
}

TEST(lower_bounds_on_probabilities_stay_below_one) {
  // Beta.ppf(0.001; n, 1) = 0.001^(1/n) = 1 - 6.9e-18 rounds to 1 for n = 1e18: Cohen's radius was +inf.
  const int64_t n = 1000000000000000000;
  const double below_one = std::nextafter(1.0, 0.0);
  const double lower = smoothgen::clopper_pearson_lower(n, n, 0.001);
  CHECK(lower < 1.0);
  CHECK(lower == below_one);
  CHECK(std::isfinite(smoothgen::cohen_radius(0.25, lower)));
  CHECK(std::isfinite(smoothgen::max_certifiable_radius(0.25, n, 0.001)));
  CHECK(smoothgen::max_certifiable_radius(0.25, n, 0.001) == smoothgen::cohen_radius(0.25, lower));
  const int64_t selection[] = {0, 100};
  const int64_t estimation[] = {0, n};
  const smoothgen::CohenCertificate c = smoothgen::cohen_certify(selection, estimation, 2, 0.25, 0.001);
  CHECK(c.prediction == 1 && c.p_lower < 1.0 && std::isfinite(c.radius) && c.radius > 0);
  // Hoeffding: mean 1 minus a deviation below half an ulp (alpha next to 1, n huge) rounded to 1.
  CHECK(smoothgen::hoeffding_lower(1.0, int64_t{1} << 62, 1.0 - 1e-16) < 1.0);
  // Bounds that are not at the edge are unchanged.
  CHECK_NEAR(smoothgen::clopper_pearson_lower(100, 100, 0.01), std::pow(0.01, 1.0 / 100), 1e-13);
  CHECK(smoothgen::hoeffding_lower(0.5, 100, 0.05) == 0.5 - smoothgen::hoeffding_radius(100, 0.05));
}

TEST(bad_arguments_throw_with_status) {
  CHECK_THROWS(smoothgen::clopper_pearson_lower(11, 10, 0.05), Status::InvalidParameter);
  CHECK_THROWS(smoothgen::clopper_pearson_lower(-1, 10, 0.05), Status::InvalidParameter);
  CHECK_THROWS(smoothgen::clopper_pearson_lower(1, 10, 1.0), Status::InvalidParameter);
  CHECK_THROWS(smoothgen::clopper_pearson_lower(1, 10, std::nan("")), Status::NonFiniteInput);
  CHECK_THROWS(smoothgen::binomial_test_pvalue(1, 10, 0.0), Status::InvalidParameter);
  CHECK_THROWS(smoothgen::hoeffding_radius(0, 0.1), Status::InvalidParameter);
  CHECK_THROWS(smoothgen::normal_cdf(std::numeric_limits<double>::infinity()), Status::NonFiniteInput);
  CHECK_THROWS(smoothgen::normal_ppf(1.5), Status::InvalidParameter);
  CHECK_THROWS(smoothgen::cohen_radius(0.0, 0.9), Status::InvalidParameter);
  CHECK_THROWS(smoothgen::order_statistic_index(-0.1, 5), Status::InvalidParameter);
  CHECK_THROWS(smoothgen::order_statistic(static_cast<const float*>(nullptr), 5, 1), Status::NullPointer);
  const float nan_values[] = {1.0f, std::nanf("")};
  CHECK_THROWS(smoothgen::order_statistic(nan_values, 2, 1), Status::NonFiniteInput);
  CHECK_THROWS(smoothgen::center_smoothing_check(0.9, 100, 0.005, 0.5, 100), Status::InvalidParameter);
  CHECK_THROWS(smoothgen::center_eps_out(0.5, 2.0, 1.0), Status::InvalidParameter);
}

TEST(huge_counts_do_not_hang_or_crash) {
  const int64_t big = int64_t{1} << 62;
  const double lower = smoothgen::clopper_pearson_lower(big / 2 + big / 4, big, 1e-9);
  CHECK(lower > 0.7 && lower < 0.75);
  const double p = smoothgen::binomial_test_pvalue(big / 2 + 12345, big, 0.5);
  CHECK(p >= 0.0 && p <= 1.0);
  // Beta(1026, 2^63 - 1026): b/a below epsilon trips an internal Boost.Math assertion (temme_root_finder)
  // in builds with assertions on, which aborted through the C ABI (found by the fuzzer). Release builds
  // (and SciPy) compute it fine; the value is SciPy's.
  CHECK_NEAR(smoothgen::clopper_pearson_lower(1026, std::numeric_limits<int64_t>::max(), 0.00784313725490196),
             1.030233931115362e-16, 1e-12);
}

TEST(cohen_from_counts) {
  const int64_t selection[] = {2, 95, 3};
  const int64_t estimation[] = {10, 990, 0};
  const smoothgen::CohenCertificate c = smoothgen::cohen_certify(selection, estimation, 3, 0.25, 0.001);
  CHECK(c.prediction == 1 && c.selected == 1 && c.count == 990 && c.n == 1000);
  CHECK_NEAR(c.p_lower, smoothgen::clopper_pearson_lower(990, 1000, 0.001), 0);
  CHECK_NEAR(c.radius, 0.25 * smoothgen::normal_ppf(c.p_lower), 0);
  const int64_t weak[] = {500, 500, 0};
  const smoothgen::CohenCertificate a = smoothgen::cohen_certify(selection, weak, 3, 0.25, 0.001);
  CHECK(a.prediction == smoothgen::kAbstain && a.radius == 0.0);
  // Ties: PREDICT takes the highest index first (reversed stable argsort), CERTIFY the first (argmax).
  const int64_t tie[] = {7, 7, 1};
  const smoothgen::CohenPrediction p = smoothgen::cohen_predict(tie, 3, 0.05);
  CHECK(p.count_top == 7 && p.count_second == 7 && p.prediction == smoothgen::kAbstain);
  const int64_t clear[] = {1, 90, 9};
  CHECK(smoothgen::cohen_predict(clear, 3, 0.001).prediction == 1);
  CHECK(smoothgen::cohen_certify(tie, estimation, 3, 0.25, 0.001).selected == 0);
  const int64_t negative[] = {1, -1};
  CHECK_THROWS(smoothgen::cohen_predict(negative, 2, 0.05), Status::InvalidParameter);
  CHECK_THROWS(smoothgen::cohen_predict(clear, 1, 0.05), Status::InvalidSize);
  const int64_t zeros[] = {0, 0};
  CHECK_THROWS(smoothgen::cohen_predict(zeros, 2, 0.05), Status::InvalidParameter);
  const int64_t overflow[] = {std::numeric_limits<int64_t>::max(), 1};
  CHECK_THROWS(smoothgen::cohen_predict(overflow, 2, 0.05), Status::InvalidSize);
}

HARNESS_MAIN
