// Error checks for CUDA runtime and NCCL calls; throw moebal::Error with file:line.
#pragma once

#include <cuda_runtime_api.h>

#include "moebal/core/error.h"

#define MOEBAL_CHECK_CUDA(expr)                                                               \
  do {                                                                                        \
    cudaError_t moebal_err_ = (expr);                                                         \
    if (moebal_err_ != cudaSuccess)                                                           \
      ::moebal::detail::throw_at<::moebal::Error>(                                            \
          __FILE__, __LINE__,                                                                 \
          ::moebal::detail::str_cat("CUDA error ", cudaGetErrorName(moebal_err_), " (",       \
                                    cudaGetErrorString(moebal_err_), ") in " #expr));        \
  } while (0)

/// Checks the last kernel launch (launch-configuration errors only; it does not synchronise).
#define MOEBAL_CHECK_LAUNCH() MOEBAL_CHECK_CUDA(cudaGetLastError())
