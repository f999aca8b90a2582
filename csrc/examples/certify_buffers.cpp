// How a serving stack uses smoothgen's core: it samples its model itself (say, a TensorRT engine
// behind a gateway), keeps class counts and a buffer of sampled outputs, and asks for certificates
// through the C ABI only.
//
// Usage:
//   smoothgen_certify_example                      demo on synthetic buffers
//   smoothgen_certify_example COUNTS OUTPUTS DIM N M [SIGMA] [EPS_IN] [METRIC]
//     COUNTS:  raw little-endian int64, 2*C values: C selection counts (n0 samples), then C
//              estimation counts (n fresh samples)
//     OUTPUTS: raw float32 rows of DIM values: N selection samples, N check samples, M radius samples
//     METRIC:  l2 (default), l1 or cosine
// Prints the Cohen certificate and the center-smoothing certificate.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <smoothgen/smoothgen_c.h>

namespace {

template <class T>
bool read_file(const char* path, std::vector<T>& out) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) return false;
  const std::streamsize bytes = f.tellg();
  if (bytes < 0 || bytes % static_cast<std::streamsize>(sizeof(T)) != 0) return false;
  out.resize(static_cast<size_t>(bytes) / sizeof(T));
  f.seekg(0);
  return static_cast<bool>(f.read(reinterpret_cast<char*>(out.data()), bytes));
}

// Deterministic synthetic data: a 10-class model that is right 97% of the time, and a 2-D output
// spread around (1, 2) with standard deviation 0.05.
void demo_buffers(std::vector<int64_t>& counts, std::vector<float>& outputs, int64_t n, int64_t m) {
  counts = {1, 0, 96, 1, 0, 0, 2, 0, 0, 0, 40, 13, 9710, 45, 22, 31, 57, 19, 33, 30};
  uint64_t state = 42;
  auto uniform = [&] {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (static_cast<double>(state >> 11) + 0.5) / 9007199254740992.0;
  };
  outputs.resize(static_cast<size_t>((2 * n + m) * 2));
  for (size_t i = 0; i < outputs.size(); i += 2) {
    const double r = std::sqrt(-2 * std::log(uniform())), t = 6.283185307179586 * uniform();
    outputs[i] = static_cast<float>(1.0 + 0.05 * r * std::cos(t));
    outputs[i + 1] = static_cast<float>(2.0 + 0.05 * r * std::sin(t));
  }
}

int fail(const char* what, int status) {
  std::fprintf(stderr, "%s failed: %s (%s)\n", what, smoothgen_status_string(status), smoothgen_last_error());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> counts;
  std::vector<float> outputs;
  int64_t dim = 2, n = 1000, m = 10000;
  double sigma = 0.25, eps_in = 0.1;
  int32_t metric_kind = SMOOTHGEN_METRIC_L2;
  if (argc == 1) {
    demo_buffers(counts, outputs, n, m);
  } else if (argc >= 6) {
    dim = std::atoll(argv[3]);
    n = std::atoll(argv[4]);
    m = std::atoll(argv[5]);
    if (argc > 6) sigma = std::atof(argv[6]);
    if (argc > 7) eps_in = std::atof(argv[7]);
    if (argc > 8) {
      const std::string name = argv[8];
      metric_kind = name == "l1" ? SMOOTHGEN_METRIC_L1 : name == "cosine" ? SMOOTHGEN_METRIC_COSINE : SMOOTHGEN_METRIC_L2;
    }
    if (!read_file(argv[1], counts) || !read_file(argv[2], outputs)) {
      std::fprintf(stderr, "cannot read %s or %s\n", argv[1], argv[2]);
      return 1;
    }
  } else {
    std::fprintf(stderr, "usage: %s [COUNTS OUTPUTS DIM N M [SIGMA] [EPS_IN] [l2|l1|cosine]]\n", argv[0]);
    return 2;
  }
  if (counts.size() < 4 || counts.size() % 2 != 0 || dim < 1 || n < 1 || m < 1 ||
      outputs.size() != static_cast<size_t>((2 * n + m) * dim)) {
    std::fprintf(stderr, "buffer sizes do not match: %zu counts, %zu output values for dim=%lld n=%lld m=%lld\n",
                 counts.size(), outputs.size(), static_cast<long long>(dim), static_cast<long long>(n),
                 static_cast<long long>(m));
    return 1;
  }
  const int64_t classes = static_cast<int64_t>(counts.size() / 2);
  const double alpha = 0.001;

  smoothgen_cohen_certificate cohen;
  int status = smoothgen_cohen_certify(counts.data(), counts.data() + classes, classes, sigma, alpha, &cohen);
  if (status != SMOOTHGEN_OK) return fail("smoothgen_cohen_certify", status);
  std::printf("cohen certificate: prediction=%lld radius=%.6f p_lower=%.6f count=%lld/%lld (sigma=%g alpha=%g)\n",
              static_cast<long long>(cohen.prediction), cohen.radius, cohen.p_lower,
              static_cast<long long>(cohen.count), static_cast<long long>(cohen.n), sigma, alpha);

  const smoothgen_metric metric{metric_kind, dim, 0, 0, 0, 0};
  // Exact min-median center (n_candidates = 0); noise_tv = 0: this stack samples the exact Gaussian.
  const smoothgen_center_params params{sigma, eps_in, 0.05, 0.005, 0.005, 0, 0.0};
  smoothgen_center_certificate center;
  const float* selection = outputs.data();
  const float* check = selection + n * dim;
  const float* radius = check + n * dim;
  status = smoothgen_center_certify(selection, n, check, n, radius, m, &metric, &params, &center);
  if (status != SMOOTHGEN_OK) return fail("smoothgen_center_certify", status);
  static const char* reasons[] = {"certified", "abstain: q > 1", "abstain: center check failed"};
  std::printf("center certificate: %s center_index=%lld center_radius=%.6f eps_in=%g eps_out=%.6f r_hat=%.6f "
              "p_within=%.4f k=%lld (n=%lld m=%lld) failure_probability=%g\n",
              reasons[center.reason], static_cast<long long>(center.center_index), center.center_radius, eps_in,
              center.eps_out, center.r_hat, center.p_within, static_cast<long long>(center.k),
              static_cast<long long>(n), static_cast<long long>(m), center.failure_probability);
  std::printf("center:");
  for (int64_t j = 0; j < dim && j < 8; ++j) std::printf(" %.6f", selection[center.center_index * dim + j]);
  std::printf("%s\n", dim > 8 ? " ..." : "");
  return 0;
}
