// Cohen et al.'s PREDICT and CERTIFY decisions from class counts (smoothgen/classify.py on counts).
#include "smoothgen/cohen.h"

#include <limits>

#include "checks.h"
#include "smoothgen/stats.h"

namespace smoothgen {
namespace {

using detail::fail;

// Checks a count buffer and returns its sum.
int64_t checked_total(const int64_t* counts, int64_t num_classes, const char* name) {
  detail::check_not_null(counts, name);
  if (num_classes < 2) fail(Status::InvalidSize, "num_classes must be >= 2, got ", num_classes);
  int64_t total = 0;
  for (int64_t c = 0; c < num_classes; ++c) {
    const int64_t v = counts[c];
    if (v < 0) fail(Status::InvalidParameter, name, "[", c, "] is negative: ", v);
    if (v > std::numeric_limits<int64_t>::max() - total) fail(Status::InvalidSize, name, " sum overflows int64");
    total += v;
  }
  if (total < 1) fail(Status::InvalidParameter, name, " are all zero");
  return total;
}

}  // namespace

CohenPrediction cohen_predict(const int64_t* counts, int64_t num_classes, double alpha) {
  checked_total(counts, num_classes, "counts");
  detail::check_alpha(alpha);
  // The reference takes np.argsort(counts, kind="stable")[::-1][:2]: largest counts first and, among
  // equal counts, the higher class index first. Order by (count, index) descending.
  int64_t top = -1, second = -1;
  auto ahead = [&](int64_t i, int64_t j) { return j < 0 || counts[i] > counts[j] || (counts[i] == counts[j] && i > j); };
  for (int64_t c = 0; c < num_classes; ++c) {
    if (ahead(c, top)) {
      second = top;
      top = c;
    } else if (ahead(c, second)) {
      second = c;
    }
  }
  const int64_t n_a = counts[top], n_b = counts[second];
  const double pvalue = binomial_test_pvalue(n_a, n_a + n_b, 0.5);
  return CohenPrediction{pvalue <= alpha ? top : kAbstain, pvalue, n_a, n_b};
}

CohenCertificate cohen_certify(const int64_t* selection_counts, const int64_t* estimation_counts,
                               int64_t num_classes, double sigma, double alpha) {
  checked_total(selection_counts, num_classes, "selection_counts");
  const int64_t n = checked_total(estimation_counts, num_classes, "estimation_counts");
  detail::check_finite(sigma, "sigma");
  if (!(sigma > 0)) fail(Status::InvalidParameter, "sigma must be a finite number > 0, got ", sigma);
  detail::check_alpha(alpha);
  int64_t selected = 0;  // np.argmax: the first index on ties
  for (int64_t c = 1; c < num_classes; ++c)
    if (selection_counts[c] > selection_counts[selected]) selected = c;
  const int64_t n_a = estimation_counts[selected];
  const double p_lower = clopper_pearson_lower(n_a, n, alpha);
  if (p_lower <= 0.5) return CohenCertificate{kAbstain, 0.0, p_lower, n_a, selected, n};
  return CohenCertificate{selected, cohen_radius(sigma, p_lower), p_lower, n_a, selected, n};
}

}  // namespace smoothgen
