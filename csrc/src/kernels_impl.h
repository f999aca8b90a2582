// The distance kernel, included by one file per SIMD level, which first defines
//   SG_KERNEL_NAME  the function's name (block_generic, block_avx2, block_avx512),
//   SG_VEC_BYTES    the width of one accumulator vector in bytes (16, 32, 64),
//   SG_TILE_R/C     the register tile: R rows of a against C rows of b at once.
// The tile is chosen so that R*C accumulators, C vectors of b and two temporaries fit in the
// level's vector registers (16 for SSE/AVX2, 32 for AVX-512): one load of b serves R pairs and one
// load of a serves C pairs. Each pair's sum runs over the same lanes in the same order whatever the
// tile, so a distance does not depend on where in a block it was computed.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "kernels.h"

namespace smoothgen {
namespace kernels {
namespace {

constexpr int kLanes = SG_VEC_BYTES / 4;
typedef float Vec __attribute__((vector_size(SG_VEC_BYTES)));
typedef int32_t IVec __attribute__((vector_size(SG_VEC_BYTES)));

inline Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline Vec absolute(Vec x) {
  IVec bits;
  std::memcpy(&bits, &x, sizeof bits);
  bits &= 0x7fffffff;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

// Pairwise (tree) sum of the lanes, in a fixed order.
inline float lane_sum(Vec v) {
  float x[kLanes];
  std::memcpy(x, &v, sizeof x);
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int i = 0; i < w; ++i) x[i] += x[i + w];
  return x[0];
}

template <int R, int C, bool L1>
inline void tile(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t d, float* out, int64_t ldo,
                 bool& finite) {
  Vec acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = Vec{} ;
  int64_t k = 0;
  for (; k + kLanes <= d; k += kLanes) {
    Vec bv[C];
    for (int c = 0; c < C; ++c) bv[c] = load(b + c * ldb + k);
    for (int r = 0; r < R; ++r) {
      const Vec av = load(a + r * lda + k);
      for (int c = 0; c < C; ++c) {
        const Vec t = av - bv[c];
        if constexpr (L1) {
          acc[r][c] += absolute(t);
        } else {
          acc[r][c] += t * t;
        }
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      float s = lane_sum(acc[r][c]);
      for (int64_t kk = k; kk < d; ++kk) {
        const float t = a[r * lda + kk] - b[c * ldb + kk];
        if constexpr (L1) {
          s += std::fabs(t);
        } else {
          s += t * t;
        }
      }
      if (!(s <= std::numeric_limits<float>::max())) finite = false;
      out[r * ldo + c] = L1 ? s : std::sqrt(s);
    }
  }
}

template <bool L1>
bool block(const float* a, int64_t lda, int64_t na, const float* b, int64_t ldb, int64_t nb, int64_t d, float* out,
           int64_t ldo) {
  constexpr int R = SG_TILE_R, C = SG_TILE_C;
  bool finite = true;
  int64_t i = 0;
  for (; i + R <= na; i += R) {
    int64_t j = 0;
    for (; j + C <= nb; j += C) tile<R, C, L1>(a + i * lda, lda, b + j * ldb, ldb, d, out + i * ldo + j, ldo, finite);
    for (; j < nb; ++j) tile<R, 1, L1>(a + i * lda, lda, b + j * ldb, ldb, d, out + i * ldo + j, ldo, finite);
  }
  for (; i < na; ++i) {
    int64_t j = 0;
    for (; j + C <= nb; j += C) tile<1, C, L1>(a + i * lda, lda, b + j * ldb, ldb, d, out + i * ldo + j, ldo, finite);
    for (; j < nb; ++j) tile<1, 1, L1>(a + i * lda, lda, b + j * ldb, ldb, d, out + i * ldo + j, ldo, finite);
  }
  return finite;
}

}  // namespace

bool SG_KERNEL_NAME(const float* a, int64_t lda, int64_t na, const float* b, int64_t ldb, int64_t nb, int64_t d,
                    bool l1, float* out, int64_t ldo) {
  return l1 ? block<true>(a, lda, na, b, ldb, nb, d, out, ldo) : block<false>(a, lda, na, b, ldb, nb, d, out, ldo);
}

}  // namespace kernels
}  // namespace smoothgen
