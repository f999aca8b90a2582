// Center smoothing against naive double-precision definitions, and exact selections on integer data.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "harness.h"
#include "smoothgen/center.h"
#include "smoothgen/stats.h"

using smoothgen::Metric;
using smoothgen::MetricKind;
using smoothgen::Status;

namespace {

std::vector<float> gaussian(int64_t rows, int64_t dim, unsigned seed, float scale = 1.0f, float offset = 0.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> x(static_cast<size_t>(rows * dim));
  for (float& v : x) v = offset + normal(rng);
  return x;
}

std::vector<float> integers(int64_t rows, int64_t dim, unsigned seed, int range) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> u(-range, range);
  std::vector<float> x(static_cast<size_t>(rows * dim));
  for (float& v : x) v = static_cast<float>(u(rng));
  return x;
}

// The definitions of smoothgen/metrics.py, in double.
double naive(const Metric& m, const float* a, const float* b) {
  const int64_t d = m.dim;
  double s = 0;
  switch (m.kind) {
    case MetricKind::L2:
      for (int64_t k = 0; k < d; ++k) s += (double(a[k]) - b[k]) * (double(a[k]) - b[k]);
      return std::sqrt(s);
    case MetricKind::L1:
      for (int64_t k = 0; k < d; ++k) s += std::fabs(double(a[k]) - b[k]);
      return s;
    case MetricKind::Cosine: {
      double ab = 0, aa = 0, bb = 0;
      for (int64_t k = 0; k < d; ++k) ab += double(a[k]) * b[k], aa += double(a[k]) * a[k], bb += double(b[k]) * b[k];
      return 1.0 - ab / std::sqrt(aa * bb);
    }
    case MetricKind::TV1D: {
      const int64_t L = m.length;
      for (int64_t l = 0; l < d / L; ++l)
        for (int64_t i = 0; i + 1 < L; ++i) {
          const double e1 = double(a[l * L + i + 1]) - b[l * L + i + 1], e0 = double(a[l * L + i]) - b[l * L + i];
          s += std::fabs(e1 - e0);
        }
      return s;
    }
    case MetricKind::TV2D: {
      const int64_t C = m.channels, H = m.height, W = m.width;
      auto e = [&](int64_t c, int64_t h, int64_t w) { return double(a[(c * H + h) * W + w]) - b[(c * H + h) * W + w]; };
      for (int64_t c = 0; c < C; ++c)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t w = 0; w < W; ++w) {
            if (h + 1 < H) s += std::fabs(e(c, h + 1, w) - e(c, h, w));
            if (w + 1 < W) s += std::fabs(e(c, h, w + 1) - e(c, h, w));
          }
      return s;
    }
  }
  return -1;
}

Metric metric(MetricKind kind, int64_t dim) {
  Metric m;
  m.kind = kind;
  m.dim = dim;
  if (kind == MetricKind::TV1D) m.length = dim % 7 == 0 ? 7 : dim;
  if (kind == MetricKind::TV2D) {
    m.channels = dim % 3 == 0 ? 3 : 1;
    m.height = dim / m.channels % 5 == 0 ? 5 : 1;
    m.width = dim / m.channels / m.height;
  }
  return m;
}

const MetricKind kKinds[] = {MetricKind::L2, MetricKind::L1, MetricKind::Cosine, MetricKind::TV1D, MetricKind::TV2D};

}  // namespace

TEST(pairwise_distances_match_definitions) {
  // Awkward sizes: 1, primes, remainders of every tile and vector width.
  for (int64_t dim : {1, 3, 7, 16, 17, 35, 64, 105, 300}) {
    for (MetricKind kind : kKinds) {
      const Metric m = metric(kind, dim);
      const int64_t na = 13, nb = 9;
      const std::vector<float> a = gaussian(na, dim, 1 + unsigned(dim)), b = gaussian(nb, dim, 2 + unsigned(dim));
      std::vector<float> out(static_cast<size_t>(na * nb));
      smoothgen::pairwise_distances(a.data(), na, b.data(), nb, m, out.data());
      for (int64_t i = 0; i < na; ++i)
        for (int64_t j = 0; j < nb; ++j) {
          const double want = naive(m, &a[size_t(i * dim)], &b[size_t(j * dim)]);
          const double got = out[size_t(i * nb + j)];
          if (!harness::near(got, want, 2e-5, 1e-5)) {
            CHECK_NEAR(got, want, 2e-5);
            return;
          }
        }
    }
  }
}

TEST(l2_is_exact_for_close_points_far_from_the_origin) {
  // The |a|^2 + |b|^2 - 2ab shortcut returns garbage here (catastrophic cancellation); the direct
  // form keeps d(x, x) == 0 and the true small distances.
  const int64_t n = 8, dim = 512;
  std::vector<float> x = gaussian(n, dim, 3, 1e-3f, 1e4f);
  std::vector<float> out(static_cast<size_t>(n * n));
  const Metric m = metric(MetricKind::L2, dim);
  smoothgen::pairwise_distances(x.data(), n, x.data(), n, m, out.data());
  for (int64_t i = 0; i < n; ++i) {
    CHECK(out[size_t(i * n + i)] == 0.0f);
    for (int64_t j = 0; j < n; ++j)
      if (i != j) CHECK_NEAR(out[size_t(i * n + j)], naive(m, &x[size_t(i * dim)], &x[size_t(j * dim)]), 1e-3);
  }
}

TEST(distances_are_symmetric_and_match_distances_to_center) {
  const int64_t n = 21, dim = 67;
  for (MetricKind kind : kKinds) {
    const Metric m = metric(kind, dim);
    const std::vector<float> x = gaussian(n, dim, 5);
    std::vector<float> all(static_cast<size_t>(n * n)), to(static_cast<size_t>(n));
    smoothgen::pairwise_distances(x.data(), n, x.data(), n, m, all.data());
    smoothgen::distances_to_center(&x[size_t(4 * dim)], x.data(), n, m, to.data());
    for (int64_t i = 0; i < n; ++i) {
      CHECK(all[size_t(i * n + 4)] == to[size_t(i)]);
      for (int64_t j = 0; j < n; ++j) CHECK(all[size_t(i * n + j)] == all[size_t(j * n + i)]);
    }
  }
}

TEST(medians_and_center_are_exact_on_integer_data) {
  // Integer-valued outputs make every l1/l2/tv distance exact, so ties are real: the medians must be
  // the exact ceil(n/2)-th smallest and the center the FIRST index of the smallest median.
  for (MetricKind kind : {MetricKind::L2, MetricKind::L1, MetricKind::TV1D, MetricKind::TV2D}) {
    for (int64_t n : {1, 2, 5, 40, 101}) {
      const int64_t dim = 15;
      const Metric m = metric(kind, dim);
      const std::vector<float> x = integers(n, dim, unsigned(n) + 11, 2);
      std::vector<float> all(static_cast<size_t>(n * n)), med(static_cast<size_t>(n));
      smoothgen::pairwise_distances(x.data(), n, x.data(), n, m, all.data());
      smoothgen::median_distances(x.data(), n, x.data(), n, m, med.data());
      const int64_t k = (n + 1) / 2;
      int64_t best = 0;
      for (int64_t i = 0; i < n; ++i) {
        std::vector<double> row;
        for (int64_t j = 0; j < n; ++j) row.push_back(naive(m, &x[size_t(i * dim)], &x[size_t(j * dim)]));
        std::sort(row.begin(), row.end());
        // sqrt of an exact integer: the float result is the double one rounded once (no double-rounding issue).
        CHECK(med[size_t(i)] == static_cast<float>(row[size_t(k - 1)]));
        if (med[size_t(i)] < med[size_t(best)]) best = i;
      }
      const smoothgen::CenterChoice c = smoothgen::min_median_center(x.data(), n, m);
      CHECK(c.index == best);
      CHECK(c.radius == med[size_t(best)]);
      std::vector<float> kth(static_cast<size_t>(n));
      smoothgen::kth_smallest_rows(all.data(), n, n, k, kth.data());
      for (int64_t i = 0; i < n; ++i) CHECK(kth[size_t(i)] == med[size_t(i)]);
    }
  }
}

TEST(candidate_variant_uses_the_first_samples) {
  const int64_t n = 200, dim = 33;
  const Metric m = metric(MetricKind::L2, dim);
  const std::vector<float> x = gaussian(n, dim, 9);
  std::vector<float> med(static_cast<size_t>(30));
  smoothgen::median_distances(x.data(), 30, x.data(), n, m, med.data());
  const int64_t want = std::min_element(med.begin(), med.end()) - med.begin();
  const smoothgen::CenterChoice c = smoothgen::min_median_center(x.data(), n, m, 30);
  CHECK(c.index == want && c.radius == med[size_t(want)]);
  // More candidates than samples: all samples.
  const smoothgen::CenterChoice all = smoothgen::min_median_center(x.data(), n, m, 0);
  const smoothgen::CenterChoice more = smoothgen::min_median_center(x.data(), n, m, 10 * n);
  CHECK(all.index == more.index && all.radius == more.radius);
}

TEST(center_certificate_on_gaussian_outputs) {
  const int64_t n = 4000, m_count = 8000, dim = 16;
  const Metric m = metric(MetricKind::L2, dim);
  const std::vector<float> sel = gaussian(n, dim, 21, 0.1f), chk = gaussian(n, dim, 22, 0.1f),
                           rad = gaussian(m_count, dim, 23, 0.1f);
  smoothgen::CenterParams p;
  p.sigma = 0.25;
  p.eps_in = 0.1;
  const smoothgen::CenterCertificate c =
      smoothgen::center_certify(sel.data(), n, chk.data(), n, rad.data(), m_count, m, p);
  CHECK(c.reason == smoothgen::CenterAbstain::None);
  CHECK(c.accepted);
  CHECK(c.k >= 1 && c.k <= m_count);
  CHECK(c.eps_out == 3.0 * c.r_hat);
  CHECK(c.r_hat > c.center_radius);
  p.eps_in = 10.0;  // far beyond what sigma can certify: q > 1
  const smoothgen::CenterCertificate a =
      smoothgen::center_certify(sel.data(), n, chk.data(), n, rad.data(), m_count, m, p);
  CHECK(a.reason == smoothgen::CenterAbstain::QAboveOne && std::isinf(a.eps_out) && a.k == 0);
}

TEST(center_certificate_counts_the_selection_sample) {
  // 60 % of the outputs at 0, 40 % spread over [5, 100]: 5 selection samples, 3 of them at 0, give the
  // center 0 with r-hat 0, and 60 % of 10 000 check samples sit within it. The check alone (delta1 at
  // n_check) accepted; with only 5 selection samples, delta1 is Hoeffding's deviation at 5 (0.77 > delta).
  const int64_t n = 5, n_check = 10000, m_count = 10000;
  const std::vector<float> sel = {0.0f, 50.0f, 0.0f, 70.0f, 0.0f};
  std::vector<float> chk(static_cast<size_t>(n_check)), rad(static_cast<size_t>(m_count));
  std::mt19937 rng(31);
  std::uniform_real_distribution<float> far(5.0f, 100.0f);
  for (size_t i = 0; i < chk.size(); ++i) chk[i] = i % 5 < 3 ? 0.0f : far(rng);
  for (size_t i = 0; i < rad.size(); ++i) rad[i] = i % 5 < 3 ? 0.0f : far(rng);
  const Metric m = metric(MetricKind::L1, 1);
  smoothgen::CenterParams p;
  p.sigma = 0.25;
  p.eps_in = 0.0;
  const smoothgen::CenterCertificate c = smoothgen::center_certify(sel.data(), n, chk.data(), n_check, rad.data(),
                                                                   m_count, m, p);
  CHECK(c.center_index == 0 && c.center_radius == 0.0f);
  CHECK(c.p_within == 0.6);
  CHECK(c.delta1 == smoothgen::hoeffding_radius(n, p.alpha1, /*two_sided=*/true));
  CHECK(!c.accepted && c.reason == smoothgen::CenterAbstain::CheckFailed && std::isinf(c.eps_out));
  // The same buffers with the roles of the two sizes swapped: a 5-sample check fails the same way.
  const smoothgen::CenterCertificate d = smoothgen::center_certify(chk.data(), 2000, sel.data(), n, rad.data(),
                                                                   m_count, m, p);
  CHECK(d.center_radius == 0.0f && d.p_within == 0.6 && d.delta1 == c.delta1 && !d.accepted);
}

TEST(candidate_variant_charges_its_miss_probability) {
  const int64_t n = 4000, m_count = 8000, dim = 16;
  const Metric m = metric(MetricKind::L2, dim);
  const std::vector<float> sel = gaussian(n, dim, 41, 0.1f), chk = gaussian(n, dim, 42, 0.1f),
                           rad = gaussian(m_count, dim, 43, 0.1f);
  smoothgen::CenterParams p;
  p.sigma = 0.25;
  p.eps_in = 0.1;
  p.n_candidates = 30;
  const smoothgen::CenterCertificate hd = smoothgen::center_certify(sel.data(), n, chk.data(), n, rad.data(), m_count, m, p);
  CHECK(hd.reason == smoothgen::CenterAbstain::None);
  CHECK(hd.candidate_miss == std::pow(0.5 - p.delta, 30.0));
  CHECK(hd.candidate_miss == smoothgen::center_candidate_miss(p.delta, 30, n));
  CHECK(hd.failure_probability == p.alpha1 + p.alpha2 + hd.candidate_miss);
  // One candidate misses the ball of mass >= 1/2 + delta with probability up to 1/2 - delta.
  p.n_candidates = 1;
  const smoothgen::CenterCertificate one = smoothgen::center_certify(sel.data(), n, chk.data(), n, rad.data(), m_count, m, p);
  CHECK(one.candidate_miss == 0.5 - p.delta && one.failure_probability == p.alpha1 + p.alpha2 + (0.5 - p.delta));
  // The exact variant (every sample a candidate) has nothing to charge.
  for (int64_t k : {int64_t{0}, n, 2 * n}) {
    p.n_candidates = k;
    const smoothgen::CenterCertificate ex = smoothgen::center_certify(sel.data(), n, chk.data(), n, rad.data(), m_count, m, p);
    CHECK(ex.candidate_miss == 0.0 && ex.failure_probability == p.alpha1 + p.alpha2);
  }
  // Capped at 1 (alpha1 + alpha2 + a miss probability near 1 under a poor sampler).
  p.n_candidates = 1;
  p.alpha1 = 0.3;
  p.alpha2 = 0.3;
  p.noise_tv = 0.5;
  const smoothgen::CenterCertificate capped = smoothgen::center_certify(sel.data(), n, chk.data(), n, rad.data(), m_count, m, p);
  CHECK(capped.failure_probability == 1.0);
}

TEST(noise_tv_is_charged_in_the_certificate) {
  const int64_t n = 4000, n_check = 3000, m_count = 8000, dim = 16;
  const Metric m = metric(MetricKind::L2, dim);
  const std::vector<float> sel = gaussian(n, dim, 51, 0.1f), chk = gaussian(n_check, dim, 52, 0.1f),
                           rad = gaussian(m_count, dim, 53, 0.1f);
  smoothgen::CenterParams p;
  p.sigma = 0.25;
  p.eps_in = 0.05;
  p.delta = 0.1;
  p.n_candidates = 30;
  const smoothgen::CenterCertificate exact =
      smoothgen::center_certify(sel.data(), n, chk.data(), n_check, rad.data(), m_count, m, p);
  p.noise_tv = 0.01;
  const smoothgen::CenterCertificate c =
      smoothgen::center_certify(sel.data(), n, chk.data(), n_check, rad.data(), m_count, m, p);
  CHECK(c.reason == smoothgen::CenterAbstain::None);
  CHECK(c.delta1 == smoothgen::hoeffding_radius(n_check, p.alpha1, true) + 0.01);
  CHECK(c.delta1 == exact.delta1 + 0.01);
  CHECK(c.q == c.p + 0.01 + smoothgen::hoeffding_radius(m_count, p.alpha2));
  CHECK(c.q > exact.q && c.k >= exact.k && c.r_hat >= exact.r_hat);
  CHECK(c.candidate_miss == std::pow(0.5 - p.delta + 0.01, 30.0));
  // q > 1 once the sampler's distance eats the margin: abstain.
  p.noise_tv = 0.35;
  const smoothgen::CenterCertificate far =
      smoothgen::center_certify(sel.data(), n, chk.data(), n_check, rad.data(), m_count, m, p);
  CHECK(far.q > 1.0 && far.reason == smoothgen::CenterAbstain::QAboveOne);
  for (double bad : {-0.01, 1.0}) {
    p.noise_tv = bad;
    CHECK_THROWS(smoothgen::center_certify(sel.data(), n, chk.data(), n_check, rad.data(), m_count, m, p),
                 Status::InvalidParameter);
  }
  p.noise_tv = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS(smoothgen::center_certify(sel.data(), n, chk.data(), n_check, rad.data(), m_count, m, p),
               Status::NonFiniteInput);
}

TEST(center_functions_reject_bad_buffers) {
  const Metric m = metric(MetricKind::L2, 4);
  const std::vector<float> x = gaussian(3, 4, 1);
  std::vector<float> out(9);
  CHECK_THROWS(smoothgen::pairwise_distances(nullptr, 3, x.data(), 3, m, out.data()), Status::NullPointer);
  CHECK_THROWS(smoothgen::pairwise_distances(x.data(), 0, x.data(), 3, m, out.data()), Status::InvalidSize);
  CHECK_THROWS(smoothgen::pairwise_distances(x.data(), 3, x.data(), 3, m, nullptr), Status::NullPointer);
  const int64_t huge = std::numeric_limits<int64_t>::max() / 2;
  CHECK_THROWS(smoothgen::pairwise_distances(x.data(), huge, x.data(), 3, m, out.data()), Status::InvalidSize);
  Metric bad = m;
  bad.dim = 0;
  CHECK_THROWS(smoothgen::min_median_center(x.data(), 3, bad), Status::InvalidSize);
  bad = metric(MetricKind::TV1D, 4);
  bad.length = 3;
  CHECK_THROWS(smoothgen::min_median_center(x.data(), 3, bad), Status::InvalidParameter);
  bad = metric(MetricKind::TV2D, 4);
  bad.height = 3;
  CHECK_THROWS(smoothgen::min_median_center(x.data(), 3, bad), Status::InvalidParameter);
  std::vector<float> y = x;
  y[5] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS(smoothgen::min_median_center(y.data(), 3, m), Status::NonFiniteInput);
  y[5] = std::numeric_limits<float>::infinity();
  CHECK_THROWS(smoothgen::median_distances(x.data(), 3, y.data(), 3, m, out.data()), Status::NonFiniteInput);
  std::vector<float> z = x;
  std::fill(z.begin() + 4, z.begin() + 8, 0.0f);
  CHECK_THROWS(smoothgen::min_median_center(z.data(), 3, metric(MetricKind::Cosine, 4)), Status::InvalidInput);
  std::vector<float> big = {3e38f, 0, 0, 0, -3e38f, 0, 0, 0};
  CHECK_THROWS(smoothgen::min_median_center(big.data(), 2, m), Status::NonFiniteResult);
}

TEST(simd_level_is_reported) {
  const std::string level = smoothgen::simd_level();
  CHECK(level == "avx512" || level == "avx2" || level == "generic");
  std::printf("SIMD level: %s\n", level.c_str());
}

HARNESS_MAIN
