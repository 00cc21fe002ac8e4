// Hopper grouped GEMM, decode tiles (Sm90SmallM in grouped_gemm_sm90.cuh).
// One instantiation per file: nvcc takes minutes on each, and the build compiles them in parallel.
#include "grouped_gemm_sm90.cuh"

MOEBAL_SM90_GROUPED_GEMM_ENTRY(small_m, Sm90SmallM<false>)
