// Distance kernels (internal). One implementation (kernels_impl.h), compiled once per SIMD level
// (kernels_generic.cpp, kernels_avx2.cpp, kernels_avx512.cpp) and chosen at run time in center.cpp.
#pragma once

#include <cstdint>

namespace smoothgen {
namespace kernels {

/// out[i * ldo + j] = ||a_i - b_j||_2 (l1 = false) or ||a_i - b_j||_1 (l1 = true) for i < na, j < nb,
/// computed directly (no |a|^2 + |b|^2 - 2ab form). Rows of a and b are d floats apart by lda / ldb.
/// Returns false if some distance overflowed to infinity.
using BlockFn = bool (*)(const float* a, int64_t lda, int64_t na, const float* b, int64_t ldb, int64_t nb,
                         int64_t d, bool l1, float* out, int64_t ldo);

bool block_generic(const float* a, int64_t lda, int64_t na, const float* b, int64_t ldb, int64_t nb, int64_t d,
                   bool l1, float* out, int64_t ldo);
#if defined(SMOOTHGEN_HAVE_AVX2)
bool block_avx2(const float* a, int64_t lda, int64_t na, const float* b, int64_t ldb, int64_t nb, int64_t d,
                bool l1, float* out, int64_t ldo);
#endif
#if defined(SMOOTHGEN_HAVE_AVX512)
bool block_avx512(const float* a, int64_t lda, int64_t na, const float* b, int64_t ldb, int64_t nb, int64_t d,
                  bool l1, float* out, int64_t ldo);
#endif

}  // namespace kernels
}  // namespace smoothgen
