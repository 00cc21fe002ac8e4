# Helpers shared by every CMakeLists of moebal: one function per kind of target, library lookups
# in pip wheels, and the configure summary.

# Ask the build's Python for a value; sets <out> to "" when Python or the module is missing.
function(moebal_python_query out code)
  set(${out} "" PARENT_SCOPE)
  if(NOT Python3_EXECUTABLE)
    return()
  endif()
  execute_process(COMMAND ${Python3_EXECUTABLE} -c "${code}" OUTPUT_VARIABLE val
                  RESULT_VARIABLE rc OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(rc EQUAL 0)
    set(${out} "${val}" PARENT_SCOPE)
  endif()
endfunction()

# NCCL: NCCL_ROOT, then the nvidia-nccl-cu13 wheel (site-packages/nvidia/nccl), then the system.
# The wheel ships only the SONAME file libnccl.so.2, so look for that name as well.
function(moebal_find_nccl)
  moebal_python_query(wheel_dir "import nvidia.nccl as m; print(list(m.__path__)[0])")
  set(hints "")
  foreach(d IN ITEMS "$ENV{NCCL_ROOT}" "${NCCL_ROOT}" "${wheel_dir}")
    if(d)
      list(APPEND hints "${d}")
    endif()
  endforeach()
  find_path(MOEBAL_NCCL_INCLUDE_DIR nccl.h HINTS ${hints} PATH_SUFFIXES include)
  find_library(MOEBAL_NCCL_LIBRARY NAMES nccl libnccl.so.2 HINTS ${hints} PATH_SUFFIXES lib lib64)
  if(MOEBAL_NCCL_INCLUDE_DIR AND MOEBAL_NCCL_LIBRARY)
    add_library(moebal::nccl SHARED IMPORTED GLOBAL)
    set_target_properties(moebal::nccl PROPERTIES IMPORTED_LOCATION "${MOEBAL_NCCL_LIBRARY}"
                          INTERFACE_INCLUDE_DIRECTORIES "${MOEBAL_NCCL_INCLUDE_DIR}")
    set(MOEBAL_NCCL_LIBRARY "${MOEBAL_NCCL_LIBRARY}" PARENT_SCOPE)
  endif()
endfunction()

# CUTLASS headers: CUTLASS_DIR, then the nvidia-cutlass wheel (cutlass_library/source/include).
function(moebal_find_cutlass)
  moebal_python_query(wheel_dir
    "import cutlass_library, os; print(os.path.join(os.path.dirname(cutlass_library.__file__), 'source'))")
  find_path(MOEBAL_CUTLASS_INCLUDE_DIR cutlass/cutlass.h
            HINTS "$ENV{CUTLASS_DIR}" "${CUTLASS_DIR}" "${wheel_dir}" PATH_SUFFIXES include)
  set(MOEBAL_CUTLASS_INCLUDE_DIR "${MOEBAL_CUTLASS_INCLUDE_DIR}" PARENT_SCOPE)
endfunction()

# Python extension modules link moebal_core statically. torch loads op libraries RTLD_GLOBAL, so
# symbols they export would interpose on the other module's copies (with that module's own type
# info and exception classes). Keep everything the static libraries bring in local to the module.
function(moebal_hide_static_symbols target)
  set_target_properties(${target} PROPERTIES CXX_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON)
  target_link_options(${target} PRIVATE "LINKER:--exclude-libs,ALL")
endfunction()

# Warnings every moebal target gets.
function(moebal_target_warnings target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall --expt-relaxed-constexpr>)
endfunction()

# A googletest executable registered with ctest. CUDA suites skip themselves without a device.
function(moebal_add_gtest name)
  cmake_parse_arguments(ARG "" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ${ARG_LIBS} GTest::gtest GTest::gtest_main)
  moebal_target_warnings(${name})
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60)
endfunction()

# A standalone benchmark binary.
function(moebal_add_bench name)
  cmake_parse_arguments(ARG "" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ${ARG_LIBS})
  moebal_target_warnings(${name})
endfunction()

# Record one row of the configure summary: what was enabled, and why.
function(moebal_note name value why)
  string(REPLACE ";" "," why "${why}")
  set_property(GLOBAL APPEND PROPERTY MOEBAL_SUMMARY "${name}|${value}|${why}")
endfunction()

function(moebal_print_summary)
  get_property(MOEBAL_SUMMARY GLOBAL PROPERTY MOEBAL_SUMMARY)
  message(STATUS "")
  message(STATUS "moebal ${PROJECT_VERSION} configuration")
  foreach(row IN LISTS MOEBAL_SUMMARY)
    string(REPLACE "|" ";" parts "${row}")
    list(GET parts 0 name)
    list(GET parts 1 value)
    list(GET parts 2 why)
    string(LENGTH "${name}" len)
    math(EXPR pad "16 - ${len}")
    string(REPEAT " " ${pad} spaces)
    message(STATUS "  ${name}${spaces}${value}  (${why})")
  endforeach()
  message(STATUS "")
endfunction()
