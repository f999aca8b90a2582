// The extern "C" ABI: every entry point catches everything, stores a thread-local message and returns
// a status code; outputs are written only on success.
#include "smoothgen/smoothgen_c.h"

#include <exception>
#include <new>
#include <string>

#include "smoothgen/center.h"
#include "smoothgen/cohen.h"
#include "smoothgen/stats.h"

namespace {

thread_local std::string g_last_error;

void set_error(const char* message) noexcept {
  try {
    g_last_error = message;
  } catch (...) {
    // Not even the message fits in memory; the status code still tells what happened.
  }
}

template <class F>
int guard(F&& f) noexcept {
  try {
    f();
    g_last_error.clear();
    return SMOOTHGEN_OK;
  } catch (const smoothgen::Error& e) {
    set_error(e.what());
    return static_cast<int>(e.status());
  } catch (const std::bad_alloc&) {
    set_error("out of memory");
    return SMOOTHGEN_ERR_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    set_error(e.what());
    return SMOOTHGEN_ERR_INTERNAL;
  } catch (...) {
    set_error("unknown exception");
    return SMOOTHGEN_ERR_INTERNAL;
  }
}

void need(const void* p, const char* name) {
  if (p == nullptr) throw smoothgen::Error(smoothgen::Status::NullPointer, std::string(name) + " is a null pointer");
}

smoothgen::Metric to_metric(const smoothgen_metric* m) {
  need(m, "metric");
  smoothgen::Metric out;
  if (m->kind < 0 || m->kind > SMOOTHGEN_METRIC_TV2D)
    throw smoothgen::Error(smoothgen::Status::InvalidParameter, "unknown metric kind " + std::to_string(m->kind));
  out.kind = static_cast<smoothgen::MetricKind>(m->kind);
  out.dim = m->dim;
  out.length = m->length;
  out.channels = m->channels;
  out.height = m->height;
  out.width = m->width;
  return out;
}

// A scalar statistic: out = f().
template <class T, class F>
int scalar(T* out, F&& f) noexcept {
  return guard([&] {
    need(out, "out");
    const T value = f();
    *out = value;
  });
}

}  // namespace

extern "C" {

#ifndef SMOOTHGEN_VERSION_STRING
#define SMOOTHGEN_VERSION_STRING "unknown"
#endif
const char* smoothgen_version(void) { return SMOOTHGEN_VERSION_STRING; }
const char* smoothgen_last_error(void) { return g_last_error.c_str(); }
const char* smoothgen_status_string(int status) {
  if (status < 0 || status > SMOOTHGEN_ERR_INTERNAL) return "unknown status";
  return smoothgen::status_name(static_cast<smoothgen::Status>(status));
}
const char* smoothgen_simd_level(void) { return smoothgen::simd_level(); }

int smoothgen_clopper_pearson_lower(int64_t k, int64_t n, double alpha, double* out) {
  return scalar(out, [&] { return smoothgen::clopper_pearson_lower(k, n, alpha); });
}
int smoothgen_clopper_pearson_upper(int64_t k, int64_t n, double alpha, double* out) {
  return scalar(out, [&] { return smoothgen::clopper_pearson_upper(k, n, alpha); });
}
int smoothgen_binomial_test_pvalue(int64_t k, int64_t n, double p, double* out) {
  return scalar(out, [&] { return smoothgen::binomial_test_pvalue(k, n, p); });
}
int smoothgen_hoeffding_radius(int64_t n, double alpha, int32_t two_sided, double* out) {
  return scalar(out, [&] { return smoothgen::hoeffding_radius(n, alpha, two_sided != 0); });
}
int smoothgen_hoeffding_lower(double mean, int64_t n, double alpha, double* out) {
  return scalar(out, [&] { return smoothgen::hoeffding_lower(mean, n, alpha); });
}
int smoothgen_hoeffding_upper(double mean, int64_t n, double alpha, double* out) {
  return scalar(out, [&] { return smoothgen::hoeffding_upper(mean, n, alpha); });
}
int smoothgen_dkw_quantile_level(double p, int64_t m, double alpha, double noise_tv, double* out) {
  return scalar(out, [&] { return smoothgen::dkw_quantile_level(p, m, alpha, noise_tv); });
}
int smoothgen_order_statistic_index(double q, int64_t m, int64_t* out) {
  return scalar(out, [&] { return smoothgen::order_statistic_index(q, m); });
}
int smoothgen_order_statistic_f32(const float* values, int64_t size, int64_t k, float* out) {
  return scalar(out, [&] { return smoothgen::order_statistic(values, size, k); });
}
int smoothgen_order_statistic_f64(const double* values, int64_t size, int64_t k, double* out) {
  return scalar(out, [&] { return smoothgen::order_statistic(values, size, k); });
}
int smoothgen_normal_cdf(double z, double* out) {
  return scalar(out, [&] { return smoothgen::normal_cdf(z); });
}
int smoothgen_normal_ppf(double p, double* out) {
  return scalar(out, [&] { return smoothgen::normal_ppf(p); });
}
int smoothgen_cohen_radius(double sigma, double p_lower, double* out) {
  return scalar(out, [&] { return smoothgen::cohen_radius(sigma, p_lower); });
}
int smoothgen_max_certifiable_radius(double sigma, int64_t n, double alpha, double* out) {
  return scalar(out, [&] { return smoothgen::max_certifiable_radius(sigma, n, alpha); });
}
int smoothgen_center_smoothing_check(double p, int64_t n, double alpha1, double delta, int64_t n_select,
                                     double noise_tv, int32_t* accepted, double* delta1, double* delta2) {
  return guard([&] {
    need(accepted, "accepted");
    need(delta1, "delta1");
    need(delta2, "delta2");
    const smoothgen::CenterCheck c = smoothgen::center_smoothing_check(p, n, alpha1, delta, n_select, noise_tv);
    *accepted = c.accepted ? 1 : 0;
    *delta1 = c.delta1;
    *delta2 = c.delta2;
  });
}
int smoothgen_center_candidate_miss(double delta, int64_t n_candidates, int64_t n, double noise_tv, double* out) {
  return scalar(out, [&] { return smoothgen::center_candidate_miss(delta, n_candidates, n, noise_tv); });
}
int smoothgen_center_certify_level(double eps_in, double sigma, double delta, double* out) {
  return scalar(out, [&] { return smoothgen::center_certify_level(eps_in, sigma, delta); });
}
int smoothgen_center_eps_out(double gamma, double beta, double r_hat, double* out) {
  return scalar(out, [&] { return smoothgen::center_eps_out(gamma, beta, r_hat); });
}

int smoothgen_cohen_predict(const int64_t* counts, int64_t num_classes, double alpha, smoothgen_cohen_prediction* out) {
  return guard([&] {
    need(out, "out");
    const smoothgen::CohenPrediction p = smoothgen::cohen_predict(counts, num_classes, alpha);
    *out = smoothgen_cohen_prediction{p.prediction, p.pvalue, p.count_top, p.count_second};
  });
}

int smoothgen_cohen_certify(const int64_t* selection_counts, const int64_t* estimation_counts, int64_t num_classes,
                            double sigma, double alpha, smoothgen_cohen_certificate* out) {
  return guard([&] {
    need(out, "out");
    const smoothgen::CohenCertificate c =
        smoothgen::cohen_certify(selection_counts, estimation_counts, num_classes, sigma, alpha);
    *out = smoothgen_cohen_certificate{c.prediction, c.radius, c.p_lower, c.count, c.selected, c.n};
  });
}

int smoothgen_pairwise_distances(const float* a, int64_t n_a, const float* b, int64_t n_b,
                                 const smoothgen_metric* metric, float* out) {
  return guard([&] { smoothgen::pairwise_distances(a, n_a, b, n_b, to_metric(metric), out); });
}

int smoothgen_distances_to_center(const float* center, const float* samples, int64_t m,
                                  const smoothgen_metric* metric, float* out) {
  return guard([&] { smoothgen::distances_to_center(center, samples, m, to_metric(metric), out); });
}

int smoothgen_median_distances(const float* candidates, int64_t n_c, const float* samples, int64_t n,
                               const smoothgen_metric* metric, float* out) {
  return guard([&] { smoothgen::median_distances(candidates, n_c, samples, n, to_metric(metric), out); });
}

int smoothgen_min_median_center(const float* samples, int64_t n, const smoothgen_metric* metric,
                                int64_t n_candidates, int64_t* index, float* radius) {
  return guard([&] {
    need(index, "index");
    need(radius, "radius");
    const smoothgen::CenterChoice c = smoothgen::min_median_center(samples, n, to_metric(metric), n_candidates);
    *index = c.index;
    *radius = c.radius;
  });
}

int smoothgen_center_certify(const float* selection, int64_t n, const float* check, int64_t n_check,
                             const float* radius_samples, int64_t m, const smoothgen_metric* metric,
                             const smoothgen_center_params* params, smoothgen_center_certificate* out) {
  return guard([&] {
    need(params, "params");
    need(out, "out");
    smoothgen::CenterParams p;
    p.sigma = params->sigma;
    p.eps_in = params->eps_in;
    p.delta = params->delta;
    p.alpha1 = params->alpha1;
    p.alpha2 = params->alpha2;
    p.n_candidates = params->n_candidates;
    p.noise_tv = params->noise_tv;
    const smoothgen::CenterCertificate c =
        smoothgen::center_certify(selection, n, check, n_check, radius_samples, m, to_metric(metric), p);
    smoothgen_center_certificate r;
    r.center_index = c.center_index;
    r.center_radius = c.center_radius;
    r.p_within = c.p_within;
    r.delta1 = c.delta1;
    r.delta2 = c.delta2;
    r.accepted = c.accepted ? 1 : 0;
    r.p = c.p;
    r.q = c.q;
    r.k = c.k;
    r.reason = static_cast<int32_t>(c.reason);
    r.r_hat = c.r_hat;
    r.eps_out = c.eps_out;
    r.gamma = c.gamma;
    r.beta = c.beta;
    r.candidate_miss = c.candidate_miss;
    r.failure_probability = c.failure_probability;
    *out = r;
  });
}

}  // extern "C"
