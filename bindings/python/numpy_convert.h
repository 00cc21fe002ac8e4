// numpy <-> std::vector conversions for the pybind11 module, with dtype and shape checks that name
// the argument. Integer arrays must have an integer dtype: a float array of ids is rejected, not
// truncated.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "moebal/core/error.h"

namespace moebal::python {

namespace py = pybind11;

inline py::array as_array(const py::handle& obj) {
  return py::reinterpret_steal<py::array>(
      py::detail::npy_api::get().PyArray_FromAny_(obj.ptr(), nullptr, 0, 0, 0, nullptr));
}

inline std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

/// Checks ndim and returns the array; the shape is reported in errors.
inline py::array checked(const py::handle& obj, const char* name, int ndim) {
  if (obj.is_none()) MOEBAL_CHECK_ARG(false, name, ": expected an array, got None");
  py::array a = as_array(obj);
  if (!a) throw py::error_already_set();
  MOEBAL_CHECK_ARG(a.ndim() == ndim, name, ": expected a ", ndim, "-d array, got shape ", shape_str(a));
  return a;
}

inline std::vector<int32_t> to_int32(const py::handle& obj, const char* name, int ndim) {
  py::array a = checked(obj, name, ndim);
  const char kind = a.dtype().kind();
  MOEBAL_CHECK_ARG(kind == 'i' || kind == 'u', name, ": expected an integer array, got dtype ",
                   std::string(py::str(a.dtype())));
  auto i64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
  std::vector<int32_t> out(static_cast<size_t>(i64.size()));
  const int64_t* p = i64.data();
  for (size_t i = 0; i < out.size(); ++i) {
    MOEBAL_CHECK_ARG(p[i] >= std::numeric_limits<int32_t>::min() && p[i] <= std::numeric_limits<int32_t>::max(),
                     name, ": value ", p[i], " at flat index ", i, " does not fit in int32");
    out[i] = static_cast<int32_t>(p[i]);
  }
  return out;
}

template <class T>
std::vector<T> to_float(const py::handle& obj, const char* name, int ndim) {
  py::array a = checked(obj, name, ndim);
  const char kind = a.dtype().kind();
  MOEBAL_CHECK_ARG(kind == 'f' || kind == 'i' || kind == 'u', name,
                   ": expected a real-valued array, got dtype ", std::string(py::str(a.dtype())));
  auto c = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(a);
  return std::vector<T>(c.data(), c.data() + c.size());
}

template <class T>
py::array_t<T> to_numpy(const std::vector<T>& v, std::vector<py::ssize_t> shape) {
  py::array_t<T> out(shape);
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

}  // namespace moebal::python
