// moebal._core: the pybind11 face of the torch-free C++ core. Imports without torch.
#include <pybind11/pybind11.h>

#include "bindings.h"
#include "moebal/core/error.h"
#include "moebal/version.h"

namespace py = pybind11;

#ifndef MOEBAL_BUILT_WITH_CUDA
#define MOEBAL_BUILT_WITH_CUDA 0
#endif
#ifndef MOEBAL_BUILT_WITH_NCCL
#define MOEBAL_BUILT_WITH_NCCL 0
#endif
#ifndef MOEBAL_BUILT_WITH_CUTLASS
#define MOEBAL_BUILT_WITH_CUTLASS 0
#endif

PYBIND11_MODULE(_core, m) {
  m.doc() = "moebal C++ core (torch-free): data model, solvers, metrics";
  // Translators run newest first, so the ValueError subclass is registered after its base.
  // MoebalValueError derives from both MoebalError and the builtin ValueError.
  auto base = py::register_exception<moebal::Error>(m, "MoebalError", PyExc_RuntimeError);
  py::tuple bases = py::make_tuple(base, py::handle(PyExc_ValueError));
  py::register_exception<moebal::ValueError>(m, "MoebalValueError", bases);

  m.attr("__version__") = MOEBAL_VERSION_STRING;
  m.def("build_info", [] {
    py::dict d;
    d["version"] = MOEBAL_VERSION_STRING;
    d["cuda"] = static_cast<bool>(MOEBAL_BUILT_WITH_CUDA);
    d["nccl"] = static_cast<bool>(MOEBAL_BUILT_WITH_NCCL);
    d["cutlass"] = static_cast<bool>(MOEBAL_BUILT_WITH_CUTLASS);
#ifdef MOEBAL_CUDA_ARCH_LIST
    d["cuda_archs"] = MOEBAL_BUILT_WITH_CUDA ? std::string(MOEBAL_CUDA_ARCH_LIST) : std::string();
#endif
#ifdef MOEBAL_CUDA_COMPILER_VERSION
    d["cuda_compiler"] = std::string(MOEBAL_CUDA_COMPILER_VERSION);
#endif
    d["cxx"] = std::string(__VERSION__);
    return d;
  }, "What this build of the C++ core was compiled with.");

  moebal::python::bind_data_model(m);
  moebal::python::bind_solvers(m);
  moebal::python::bind_probe(m);
  moebal::python::bind_grace(m);
}
