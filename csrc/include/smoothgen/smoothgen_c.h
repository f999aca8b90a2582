/* smoothgen C ABI: certificates for serving stacks without a Python interpreter.
 *
 * Every function returns a status code (SMOOTHGEN_OK = 0 on success) and writes its results through
 * caller-owned output pointers, which are left untouched on failure. No C++ exception crosses this
 * boundary, and no input makes a function abort: null pointers, sizes < 1, sizes whose buffers could
 * not be addressed, NaN/Inf inputs and impossible parameters all return an error code. After a
 * failure, smoothgen_last_error() returns a message for the calling thread (thread-local storage,
 * valid until that thread's next call into the library).
 *
 * Buffers are row-major float32 [rows, dim] for sampled outputs and int64 for class counts. The
 * library reads exactly the sizes it is given: passing a size larger than the buffer is the caller's
 * bug and cannot be detected.
 *
 * Each function is the C face of the C++ API of the same name (smoothgen/stats.h, cohen.h, center.h),
 * which documents the formulas.
 *
 * Center smoothing assumes that its sampled outputs are i.i.d. draws of f(x + eps), each from a sampler
 * within noise_tv (total-variation distance, per copy) of the exact Gaussian eps ~ N(0, sigma^2 I), and
 * that the selection, check and radius buffers are independent of each other. noise_tv = 0 declares an
 * exact sampler; a sampler that only approximates the Gaussian (low-precision noise, a quantized
 * generator) must declare a bound on its distance, which the certificate then charges.
 */
#ifndef SMOOTHGEN_C_H
#define SMOOTHGEN_C_H

#include <stdint.h>

#if defined(_WIN32)
#  if defined(SMOOTHGEN_BUILDING_SHARED)
#    define SMOOTHGEN_API __declspec(dllexport)
#  elif defined(SMOOTHGEN_USING_SHARED)
#    define SMOOTHGEN_API __declspec(dllimport)
#  else
#    define SMOOTHGEN_API
#  endif
#else
#  define SMOOTHGEN_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes (the same values as smoothgen::Status in error.h). */
#define SMOOTHGEN_OK 0
#define SMOOTHGEN_ERR_NULL_POINTER 1
#define SMOOTHGEN_ERR_INVALID_SIZE 2
#define SMOOTHGEN_ERR_INVALID_PARAMETER 3
#define SMOOTHGEN_ERR_NONFINITE_INPUT 4
#define SMOOTHGEN_ERR_INVALID_INPUT 5
#define SMOOTHGEN_ERR_NONFINITE_RESULT 6
#define SMOOTHGEN_ERR_OUT_OF_MEMORY 7
#define SMOOTHGEN_ERR_INTERNAL 8

/* Metric kinds (smoothgen::MetricKind). */
#define SMOOTHGEN_METRIC_L2 0
#define SMOOTHGEN_METRIC_L1 1
#define SMOOTHGEN_METRIC_COSINE 2
#define SMOOTHGEN_METRIC_TV1D 3
#define SMOOTHGEN_METRIC_TV2D 4

/* Reasons of an abstaining center certificate (smoothgen::CenterAbstain). */
#define SMOOTHGEN_CENTER_CERTIFIED 0
#define SMOOTHGEN_CENTER_Q_ABOVE_ONE 1
#define SMOOTHGEN_CENTER_CHECK_FAILED 2

/* The class reported when a classifier certificate abstains. */
#define SMOOTHGEN_ABSTAIN (-1)

/* A metric and the shape of one output row: dim floats; TV1D needs length (dim % length == 0), TV2D
 * needs channels * height * width == dim; unused fields are ignored. */
typedef struct smoothgen_metric {
  int32_t kind;
  int64_t dim;
  int64_t length;
  int64_t channels;
  int64_t height;
  int64_t width;
} smoothgen_metric;

typedef struct smoothgen_cohen_prediction {
  int64_t prediction; /* class, or SMOOTHGEN_ABSTAIN */
  double pvalue;
  int64_t count_top;
  int64_t count_second;
} smoothgen_cohen_prediction;

typedef struct smoothgen_cohen_certificate {
  int64_t prediction; /* class, or SMOOTHGEN_ABSTAIN */
  double radius;      /* 0 when abstaining */
  double p_lower;
  int64_t count;
  int64_t selected;
  int64_t n;
} smoothgen_cohen_certificate;

typedef struct smoothgen_center_params {
  double sigma;
  double eps_in;
  double delta;  /* in (0, 1/2) */
  double alpha1;
  double alpha2;
  int64_t n_candidates; /* <= 0 or >= n: exact min-median center over all n selection samples;
                           1..n-1: high-dimensional variant, charged in candidate_miss */
  double noise_tv; /* per-copy total-variation distance of the sampler from N(0, sigma^2 I): finite, in
                      [0, 1) (0: exact sampler); NaN/Inf give SMOOTHGEN_ERR_NONFINITE_INPUT, values
                      outside [0, 1) SMOOTHGEN_ERR_INVALID_PARAMETER */
} smoothgen_center_params;

typedef struct smoothgen_center_certificate {
  int64_t center_index;
  float center_radius;
  double p_within;
  double delta1;  /* sqrt(ln(2/alpha1) / (2 min(n, n_check))) + noise_tv */
  double delta2;  /* 1/2 - (p_within - delta1) */
  int32_t accepted; /* max(delta1, delta2) <= delta */
  double p;
  double q;       /* p + noise_tv + sqrt(ln(1/alpha2) / (2m)) */
  int64_t k;
  int32_t reason; /* SMOOTHGEN_CENTER_* */
  double r_hat;   /* +inf when abstaining */
  double eps_out; /* +inf when abstaining */
  double gamma;
  double beta;
  double candidate_miss;      /* (1/2 - delta + noise_tv)^n_candidates (capped at 1) when
                                 1 <= n_candidates < n, else 0 */
  double failure_probability; /* min(1, alpha1 + alpha2 + candidate_miss): the certificate holds with
                                 probability >= 1 - failure_probability */
} smoothgen_center_certificate;

/* --- library ---------------------------------------------------------------------------------- */
SMOOTHGEN_API const char* smoothgen_version(void);
/* The message of the calling thread's last failure ("" if none). */
SMOOTHGEN_API const char* smoothgen_last_error(void);
/* A constant name for a status code. */
SMOOTHGEN_API const char* smoothgen_status_string(int status);
/* "avx512", "avx2" or "generic": the distance kernels in use. */
SMOOTHGEN_API const char* smoothgen_simd_level(void);

/* --- statistics (smoothgen/stats.h) ------------------------------------------------------------ */
SMOOTHGEN_API int smoothgen_clopper_pearson_lower(int64_t k, int64_t n, double alpha, double* out);
SMOOTHGEN_API int smoothgen_clopper_pearson_upper(int64_t k, int64_t n, double alpha, double* out);
SMOOTHGEN_API int smoothgen_binomial_test_pvalue(int64_t k, int64_t n, double p, double* out);
SMOOTHGEN_API int smoothgen_hoeffding_radius(int64_t n, double alpha, int32_t two_sided, double* out);
SMOOTHGEN_API int smoothgen_hoeffding_lower(double mean, int64_t n, double alpha, double* out);
SMOOTHGEN_API int smoothgen_hoeffding_upper(double mean, int64_t n, double alpha, double* out);
/* *out = p + noise_tv + sqrt(ln(1/alpha) / (2m)); noise_tv = 0 for an exact sampler. */
SMOOTHGEN_API int smoothgen_dkw_quantile_level(double p, int64_t m, double alpha, double noise_tv, double* out);
/* *out = ceil(q m) clamped to [1, m], or 0 when q > 1. */
SMOOTHGEN_API int smoothgen_order_statistic_index(double q, int64_t m, int64_t* out);
SMOOTHGEN_API int smoothgen_order_statistic_f32(const float* values, int64_t size, int64_t k, float* out);
SMOOTHGEN_API int smoothgen_order_statistic_f64(const double* values, int64_t size, int64_t k, double* out);
SMOOTHGEN_API int smoothgen_normal_cdf(double z, double* out);
SMOOTHGEN_API int smoothgen_normal_ppf(double p, double* out);
SMOOTHGEN_API int smoothgen_cohen_radius(double sigma, double p_lower, double* out);
SMOOTHGEN_API int smoothgen_max_certifiable_radius(double sigma, int64_t n, double alpha, double* out);
/* p: fraction of the n check samples within r-hat; n_select: number of selection samples the center
 * was chosen from. *delta1 = sqrt(ln(2/alpha1) / (2 min(n, n_select))) + noise_tv,
 * *delta2 = 1/2 - (p - *delta1), *accepted = max(*delta1, *delta2) <= delta. */
SMOOTHGEN_API int smoothgen_center_smoothing_check(double p, int64_t n, double alpha1, double delta,
                                                   int64_t n_select, double noise_tv, int32_t* accepted,
                                                   double* delta1, double* delta2);
/* *out = (1/2 - delta + noise_tv)^n_candidates (capped at 1) when 1 <= n_candidates < n, else 0. */
SMOOTHGEN_API int smoothgen_center_candidate_miss(double delta, int64_t n_candidates, int64_t n, double noise_tv,
                                                  double* out);
SMOOTHGEN_API int smoothgen_center_certify_level(double eps_in, double sigma, double delta, double* out);
SMOOTHGEN_API int smoothgen_center_eps_out(double gamma, double beta, double r_hat, double* out);

/* --- Cohen et al. from class counts (smoothgen/cohen.h) --------------------------------------- */
/* The counts must come from independent noisy copies x + eps with eps ~ N(0, sigma^2 I) exactly, the
 * selection and estimation copies disjoint. Counts drawn with a sampler within total variation tau of that
 * Gaussian per copy (smoothgen's own: tau = ceil(d/2) * 2^-64) are covered by lowering p_lower by tau and
 * recomputing the radius, as smoothgen.SmoothedClassifier does; these two functions do not do it. */
SMOOTHGEN_API int smoothgen_cohen_predict(const int64_t* counts, int64_t num_classes, double alpha,
                                          smoothgen_cohen_prediction* out);
SMOOTHGEN_API int smoothgen_cohen_certify(const int64_t* selection_counts, const int64_t* estimation_counts,
                                          int64_t num_classes, double sigma, double alpha,
                                          smoothgen_cohen_certificate* out);

/* --- center smoothing on float32 buffers (smoothgen/center.h) --------------------------------- */
/* out: [n_a, n_b] */
SMOOTHGEN_API int smoothgen_pairwise_distances(const float* a, int64_t n_a, const float* b, int64_t n_b,
                                               const smoothgen_metric* metric, float* out);
/* out: [m] */
SMOOTHGEN_API int smoothgen_distances_to_center(const float* center, const float* samples, int64_t m,
                                                const smoothgen_metric* metric, float* out);
/* out: [n_c] */
SMOOTHGEN_API int smoothgen_median_distances(const float* candidates, int64_t n_c, const float* samples,
                                             int64_t n, const smoothgen_metric* metric, float* out);
SMOOTHGEN_API int smoothgen_min_median_center(const float* samples, int64_t n, const smoothgen_metric* metric,
                                              int64_t n_candidates, int64_t* index, float* radius);
SMOOTHGEN_API int smoothgen_center_certify(const float* selection, int64_t n, const float* check,
                                           int64_t n_check, const float* radius_samples, int64_t m,
                                           const smoothgen_metric* metric, const smoothgen_center_params* params,
                                           smoothgen_center_certificate* out);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* SMOOTHGEN_C_H */
