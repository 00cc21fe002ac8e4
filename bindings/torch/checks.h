// Input checks shared by the CPU and CUDA kernels of the torch ops.
#pragma once

#include <torch/types.h>

#include <utility>

#include "moebal/core/error.h"

namespace moebal::pytorch {

/// ValueErrorsOf<&fn>::call is fn with moebal::ValueError (raised by the C++ and CUDA layers on a
/// bad argument or a bad MOEBAL_* tuning override) rethrown as c10::ValueError, so Python gets a
/// ValueError for those as for the checks of the ops themselves (otherwise torch turns any
/// std::exception into RuntimeError). Every op kernel is registered through it.
template <auto Fn>
struct ValueErrorsOf;

template <class R, class... Args, R (*Fn)(Args...)>
struct ValueErrorsOf<Fn> {
  static R call(Args... args) {
    try {
      return Fn(std::forward<Args>(args)...);
    } catch (const moebal::ValueError& e) {
      TORCH_CHECK_VALUE(false, e.what());
      throw;  // not reached: TORCH_CHECK_VALUE(false, ...) throws
    }
  }
};

inline void check_topk_ids(const at::Tensor& ids, int64_t num_experts) {
  TORCH_CHECK_VALUE(ids.scalar_type() == at::kInt, "moebal: topk_ids must be int32, got ",
                    ids.scalar_type());
  TORCH_CHECK_VALUE(ids.is_contiguous(), "moebal: topk_ids must be contiguous");
  TORCH_CHECK_VALUE(num_experts > 0 && num_experts <= (1 << 30),
                    "moebal: num_experts must be in [1, 2^30], got ", num_experts);
}

}  // namespace moebal::pytorch
