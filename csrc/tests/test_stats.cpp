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
  const smoothgen::CenterCheck c = smoothgen::center_smoothing_check(0.9, 10000, 0.005, 0.05);
  CHECK(c.accepted);
  CHECK_NEAR(c.delta1, std::sqrt(std::log(2 / 0.005) / 20000), 1e-15);
  CHECK_NEAR(c.delta2, 0.5 - (0.9 - c.delta1), 1e-15);
  CHECK(!smoothgen::center_smoothing_check(0.4, 10000, 0.005, 0.05).accepted);
  CHECK(!smoothgen::center_smoothing_check(0.9, 300, 0.005, 0.05).accepted);  // delta1 > delta
  CHECK(smoothgen::center_eps_out(2.0, 4.0, 1.5) == 15.0);
  // R̂ = 0 certifies 0 even when γ·(1 + β) overflows (found by the fuzzer: inf·0 was NaN).
  CHECK(smoothgen::center_eps_out(1e300, 1e300, 0.0) == 0.0);
  CHECK(smoothgen::center_eps_out(1e300, 1e300, 1.0) == std::numeric_limits<double>::infinity());
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
  CHECK_THROWS(smoothgen::center_smoothing_check(0.9, 100, 0.005, 0.5), Status::InvalidParameter);
  CHECK_THROWS(smoothgen::center_eps_out(0.5, 2.0, 1.0), Status::InvalidParameter);
}

TEST(huge_counts_do_not_hang_or_crash) {
  const int64_t big = int64_t{1} << 62;
  const double lower = smoothgen::clopper_pearson_lower(big / 2 + big / 4, big, 1e-9);
  CHECK(lower > 0.7 && lower < 0.75);
  const double p = smoothgen::binomial_test_pvalue(big / 2 + 12345, big, 0.5);
  CHECK(p >= 0.0 && p <= 1.0);
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
