// AVX-512 kernels (this file is compiled with -mavx512f -mavx512vl -mavx512dq -mfma; used only when the CPU has them).
#define SG_KERNEL_NAME block_avx512
#define SG_VEC_BYTES 64
#define SG_TILE_R 4
#define SG_TILE_C 4
#include "kernels_impl.h"
