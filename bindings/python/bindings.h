// One bind_* function per component; module.cpp calls them in order.
#pragma once

#include <pybind11/pybind11.h>

namespace moebal::python {
void bind_data_model(pybind11::module_& m);
void bind_solvers(pybind11::module_& m);
void bind_probe(pybind11::module_& m);
void bind_grace(pybind11::module_& m);
}  // namespace moebal::python
