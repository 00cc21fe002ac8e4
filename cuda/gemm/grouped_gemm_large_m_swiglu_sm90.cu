// Hopper grouped GEMM, prefill tiles (Sm90LargeM in grouped_gemm_sm90.cuh), SwiGLU epilogue.
// One instantiation per file: nvcc takes minutes on each, and the build compiles them in parallel.
#include "grouped_gemm_sm90.cuh"

MOEBAL_SM90_GROUPED_GEMM_ENTRY(large_m_swiglu, Sm90LargeM<true>)
