// Hopper grouped GEMM, middle-regime tiles (Sm90MediumM in grouped_gemm_sm90.cuh), SwiGLU epilogue.
// One instantiation per file: nvcc takes minutes on each, and the build compiles them in parallel.
#include "grouped_gemm_sm90.cuh"

MOEBAL_SM90_GROUPED_GEMM_ENTRY(medium_m_swiglu, Sm90MediumM<true>)
