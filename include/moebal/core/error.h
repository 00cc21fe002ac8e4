// Error handling for the whole library: one exception type hierarchy, one set of check macros.
// Library code never exits or prints; it throws. The Python bindings translate
// moebal::ValueError into a Python ValueError subclass and moebal::Error into RuntimeError.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace moebal {

/// Base of every error the library throws. what() is "file:line: message".
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

/// An argument or input that does not satisfy its documented contract (shape, range, finiteness).
class ValueError : public Error {
 public:
  explicit ValueError(const std::string& msg) : Error(msg) {}
};

namespace detail {

template <class... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  ((os << args), ...);
  return os.str();
}

template <class E>
[[noreturn]] inline void throw_at(const char* file, int line, const std::string& msg) {
  // Keep only the path below the repository root so messages are short and stable.
  std::string f(file);
  for (const char* root : {"/include/", "/cpp/", "/cuda/", "/bindings/"}) {
    auto pos = f.rfind(root);
    if (pos != std::string::npos) {
      f = f.substr(pos + 1);
      break;
    }
  }
  throw E(str_cat(msg, " [", f, ":", line, "]"));
}

}  // namespace detail
}  // namespace moebal

/// Throws moebal::Error (an internal invariant or a runtime failure) when cond is false.
#define MOEBAL_CHECK(cond, ...)                                                          \
  do {                                                                                   \
    if (!(cond))                                                                         \
      ::moebal::detail::throw_at<::moebal::Error>(                                       \
          __FILE__, __LINE__, ::moebal::detail::str_cat("check failed: " #cond ": ", ##__VA_ARGS__)); \
  } while (0)

/// Throws moebal::ValueError (bad input from the caller) when cond is false. The message should
/// name the offending field and the value seen.
#define MOEBAL_CHECK_ARG(cond, ...)                                                     \
  do {                                                                                   \
    if (!(cond))                                                                         \
      ::moebal::detail::throw_at<::moebal::ValueError>(__FILE__, __LINE__,               \
                                                       ::moebal::detail::str_cat(__VA_ARGS__)); \
  } while (0)
