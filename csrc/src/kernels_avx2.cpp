// AVX2 + FMA kernels (this file is compiled with -mavx2 -mfma; used only when the CPU has them).
#define SG_KERNEL_NAME block_avx2
#define SG_VEC_BYTES 32
#define SG_TILE_R 2
#define SG_TILE_C 4
#include "kernels_impl.h"
