// smoothgen C++ core: Cohen et al.'s PREDICT and CERTIFY decisions from class counts (docs/theory.md section 1).
//
// A serving stack samples its model itself and hands over the class counts; these functions make the
// decisions exactly as smoothgen.SmoothedClassifier does with the same counts.
#pragma once

#include <cstdint>

#include "smoothgen/error.h"

namespace smoothgen {

/// The class index reported when the smoothed classifier abstains (as in smoothgen.ABSTAIN).
constexpr int64_t kAbstain = -1;

/// Result of PREDICT.
struct CohenPrediction {
  int64_t prediction;    ///< the top class, or kAbstain when the binomial test is not significant
  double pvalue;         ///< two-sided binomial test p-value of count_top out of count_top + count_second
  int64_t count_top;     ///< largest count (ties: the highest class index, as the Python reference's
                         ///< reversed stable argsort)
  int64_t count_second;  ///< second largest count (same tie rule)
};

/// PREDICT from the counts of n noisy samples: the top class when the two-sided binomial test of the
/// top two counts at 1/2 has p-value <= alpha, else abstain.
/// Requires counts != nullptr, num_classes >= 2, counts >= 0 with a positive sum, 0 < alpha < 1.
CohenPrediction cohen_predict(const int64_t* counts, int64_t num_classes, double alpha);

/// Result of CERTIFY.
struct CohenCertificate {
  int64_t prediction;  ///< the certified class, or kAbstain
  double radius;       ///< sigma * Phi^-1(p_lower), 0 when abstaining
  double p_lower;      ///< one-sided (1 - alpha) Clopper-Pearson lower bound on pA
  int64_t count;       ///< nA: votes for the selected class among the estimation samples
  int64_t selected;    ///< the class chosen from the selection counts (first index on ties)
  int64_t n;           ///< number of estimation samples (the sum of estimation_counts)
};

/// CERTIFY: select the class from the selection counts (n0 samples), bound its probability from the
/// disjoint estimation counts (n samples), and certify radius sigma * Phi^-1(p_lower) when
/// p_lower > 1/2. Requires both count buffers of num_classes >= 2 non-negative entries with positive
/// sums, sigma > 0 finite, 0 < alpha < 1.
CohenCertificate cohen_certify(const int64_t* selection_counts, const int64_t* estimation_counts,
                               int64_t num_classes, double sigma, double alpha);

}  // namespace smoothgen
