// The C ABI: status codes instead of exceptions, thread-local messages, outputs untouched on failure.
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"
#include "smoothgen/smoothgen_c.h"

TEST(ok_calls_clear_the_message) {
  double out = -1;
  CHECK(smoothgen_clopper_pearson_lower(5, 10, 0.001, &out) == SMOOTHGEN_OK);
  CHECK_NEAR(out, 0.08981318981185427, 1e-12);
  CHECK(std::string(smoothgen_last_error()).empty());
  CHECK(std::string(smoothgen_version()) == "0.1.0");
  CHECK(std::string(smoothgen_status_string(SMOOTHGEN_ERR_NULL_POINTER)) == "null pointer");
  CHECK(std::string(smoothgen_status_string(99)) == "unknown status");
}

TEST(errors_are_codes_with_messages) {
  double out = 42.0;
  CHECK(smoothgen_clopper_pearson_lower(5, 10, 2.0, &out) == SMOOTHGEN_ERR_INVALID_PARAMETER);
  CHECK(out == 42.0);  // untouched
  CHECK(std::string(smoothgen_last_error()).find("alpha") != std::string::npos);
  CHECK(smoothgen_clopper_pearson_lower(5, 10, 0.1, nullptr) == SMOOTHGEN_ERR_NULL_POINTER);
  CHECK(smoothgen_normal_cdf(std::nan(""), &out) == SMOOTHGEN_ERR_NONFINITE_INPUT);
  CHECK(smoothgen_normal_ppf(-0.5, &out) == SMOOTHGEN_ERR_INVALID_PARAMETER);
  int32_t accepted = 0;
  double d1 = 0, d2 = 0;
  CHECK(smoothgen_center_smoothing_check(0.9, 100, 0.005, 0.05, 100, 0.0, &accepted, nullptr, &d2) ==
        SMOOTHGEN_ERR_NULL_POINTER);
  CHECK(smoothgen_center_smoothing_check(0.9, 0, 0.005, 0.05, 100, 0.0, &accepted, &d1, &d2) ==
        SMOOTHGEN_ERR_INVALID_PARAMETER);
  CHECK(smoothgen_center_smoothing_check(0.9, 100, 0.005, 0.05, 0, 0.0, &accepted, &d1, &d2) ==
        SMOOTHGEN_ERR_INVALID_PARAMETER);
  CHECK(smoothgen_center_smoothing_check(0.9, 100, 0.005, 0.05, 100, 1.0, &accepted, &d1, &d2) ==
        SMOOTHGEN_ERR_INVALID_PARAMETER);
  CHECK(smoothgen_center_smoothing_check(0.9, 100, 0.005, 0.05, 100, std::nan(""), &accepted, &d1, &d2) ==
        SMOOTHGEN_ERR_NONFINITE_INPUT);
  CHECK(smoothgen_dkw_quantile_level(0.5, 100, 0.005, -0.5, &out) == SMOOTHGEN_ERR_INVALID_PARAMETER);
  CHECK(smoothgen_center_candidate_miss(0.05, 3, 100, 0.0, nullptr) == SMOOTHGEN_ERR_NULL_POINTER);
  CHECK(smoothgen_center_candidate_miss(0.05, 3, 100, std::nan(""), &out) == SMOOTHGEN_ERR_NONFINITE_INPUT);
  CHECK(out == 42.0);  // untouched by every failure above
  int64_t index = -7;
  float radius = -7;
  CHECK(smoothgen_min_median_center(nullptr, 10, nullptr, 0, &index, &radius) == SMOOTHGEN_ERR_NULL_POINTER);
  smoothgen_metric metric{SMOOTHGEN_METRIC_L2, 2, 0, 0, 0, 0};
  const float samples[] = {0, 0, 1, 1, 2, 2};
  CHECK(smoothgen_min_median_center(samples, 0, &metric, 0, &index, &radius) == SMOOTHGEN_ERR_INVALID_SIZE);
  metric.kind = 17;
  CHECK(smoothgen_min_median_center(samples, 3, &metric, 0, &index, &radius) == SMOOTHGEN_ERR_INVALID_PARAMETER);
  CHECK(index == -7 && radius == -7);
  metric.kind = SMOOTHGEN_METRIC_L2;
  CHECK(smoothgen_min_median_center(samples, 3, &metric, 0, &index, &radius) == SMOOTHGEN_OK);
  CHECK(index == 0 && radius == std::sqrt(2.0f));  // all three medians tie: the first index
  // Sizes whose buffers could not be addressed are refused before anything is read.
  metric.dim = std::numeric_limits<int64_t>::max() / 4;
  CHECK(smoothgen_min_median_center(samples, 3, &metric, 0, &index, &radius) == SMOOTHGEN_ERR_INVALID_SIZE);
}

TEST(messages_are_thread_local) {
  double out = 0;
  CHECK(smoothgen_cohen_radius(-1.0, 0.9, &out) == SMOOTHGEN_ERR_INVALID_PARAMETER);
  const std::string here = smoothgen_last_error();
  std::string there = "unset";
  std::thread worker([&] {
    there = smoothgen_last_error();  // nothing failed on this thread
    double o = 0;
    (void)smoothgen_normal_ppf(3.0, &o);
  });
  worker.join();
  CHECK(there.empty());
  CHECK(std::string(smoothgen_last_error()) == here);
}

TEST(cohen_and_center_through_the_abi) {
  const int64_t selection[] = {1, 98, 1};
  const int64_t estimation[] = {3, 995, 2};
  smoothgen_cohen_certificate cert;
  CHECK(smoothgen_cohen_certify(selection, estimation, 3, 0.5, 0.001, &cert) == SMOOTHGEN_OK);
  CHECK(cert.prediction == 1 && cert.count == 995 && cert.n == 1000 && cert.radius > 0);
  smoothgen_cohen_prediction pred;
  CHECK(smoothgen_cohen_predict(estimation, 3, 0.001, &pred) == SMOOTHGEN_OK && pred.prediction == 1);
  CHECK(smoothgen_cohen_predict(estimation, 3, 0.001, nullptr) == SMOOTHGEN_ERR_NULL_POINTER);

  const int64_t n = 2000, m = 4000;
  std::vector<float> sel(n * 4), chk(n * 4), rad(m * 4);
  uint64_t state = 7;
  auto next = [&] {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<float>(state >> 40) / 16777216.0f;
  };
  for (float& v : sel) v = next();
  for (float& v : chk) v = next();
  for (float& v : rad) v = next();
  smoothgen_metric metric{SMOOTHGEN_METRIC_L1, 4, 0, 0, 0, 0};
  smoothgen_center_params params{0.25, 0.05, 0.05, 0.005, 0.005, 0, 0.0};
  smoothgen_center_certificate c;
  CHECK(smoothgen_center_certify(sel.data(), n, chk.data(), n, rad.data(), m, &metric, &params, &c) == SMOOTHGEN_OK);
  CHECK(c.reason == SMOOTHGEN_CENTER_CERTIFIED && c.accepted == 1 && c.eps_out == 3 * c.r_hat);
  CHECK(c.candidate_miss == 0.0 && c.failure_probability == 0.005 + 0.005);
  // The high-dimensional variant and an inexact sampler, through the new fields.
  params.n_candidates = 30;
  params.noise_tv = 0.001;
  smoothgen_center_certificate hd;
  CHECK(smoothgen_center_certify(sel.data(), n, chk.data(), n, rad.data(), m, &metric, &params, &hd) == SMOOTHGEN_OK);
  double miss = -1;
  CHECK(smoothgen_center_candidate_miss(0.05, 30, n, 0.001, &miss) == SMOOTHGEN_OK);
  CHECK(miss == std::pow(0.5 - 0.05 + 0.001, 30.0));
  CHECK(hd.candidate_miss == miss && hd.failure_probability == 0.005 + 0.005 + miss);
  double delta1 = 0, delta2 = 0, q = 0;
  int32_t accepted = -1;
  CHECK(smoothgen_center_smoothing_check(hd.p_within, n, 0.005, 0.05, n, 0.001, &accepted, &delta1, &delta2) ==
        SMOOTHGEN_OK);
  CHECK(hd.delta1 == delta1 && hd.delta2 == delta2 && hd.accepted == accepted);
  CHECK(smoothgen_dkw_quantile_level(hd.p, m, 0.005, 0.001, &q) == SMOOTHGEN_OK && hd.q == q);
  smoothgen_center_certificate untouched = hd;
  params.noise_tv = 1.0;
  CHECK(smoothgen_center_certify(sel.data(), n, chk.data(), n, rad.data(), m, &metric, &params, &hd) ==
        SMOOTHGEN_ERR_INVALID_PARAMETER);
  CHECK(std::string(smoothgen_last_error()).find("noise_tv") != std::string::npos);
  params.noise_tv = std::numeric_limits<double>::infinity();
  CHECK(smoothgen_center_certify(sel.data(), n, chk.data(), n, rad.data(), m, &metric, &params, &hd) ==
        SMOOTHGEN_ERR_NONFINITE_INPUT);
  CHECK(std::memcmp(&hd, &untouched, sizeof hd) == 0);
  params.noise_tv = 0.0;
  params.delta = 0.7;
  CHECK(smoothgen_center_certify(sel.data(), n, chk.data(), n, rad.data(), m, &metric, &params, &c) ==
        SMOOTHGEN_ERR_INVALID_PARAMETER);
}

TEST(center_check_counts_the_selection_through_the_abi) {
  // 5 selection samples, 10 000 check samples: delta1 is Hoeffding's deviation at 5.
  int32_t accepted = -1;
  double delta1 = 0, delta2 = 0, want = 0;
  CHECK(smoothgen_center_smoothing_check(0.9, 10000, 0.005, 0.05, 5, 0.0, &accepted, &delta1, &delta2) == SMOOTHGEN_OK);
  CHECK(smoothgen_hoeffding_radius(5, 0.005, 1, &want) == SMOOTHGEN_OK);
  CHECK(delta1 == want && accepted == 0);
}

TEST(clopper_pearson_lower_stays_below_one_through_the_abi) {
  double lower = 0, radius = 0;
  CHECK(smoothgen_clopper_pearson_lower(1000000000000000000, 1000000000000000000, 0.001, &lower) == SMOOTHGEN_OK);
  CHECK(lower < 1.0);
  CHECK(smoothgen_cohen_radius(0.25, lower, &radius) == SMOOTHGEN_OK && std::isfinite(radius));
}

HARNESS_MAIN
