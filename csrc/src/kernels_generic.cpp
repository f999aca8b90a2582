// Baseline kernels (SSE2 on x86-64; whatever the target offers elsewhere).
#define SG_KERNEL_NAME block_generic
#define SG_VEC_BYTES 16
#define SG_TILE_R 2
#define SG_TILE_C 4
#include "kernels_impl.h"
