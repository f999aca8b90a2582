// Argument checks shared by the implementation files (not installed).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>

#include "smoothgen/error.h"

namespace smoothgen {
namespace detail {

template <class... Parts>
[[noreturn]] inline void fail(Status status, const Parts&... parts) {
  std::ostringstream message;
  message.precision(17);
  (message << ... << parts);
  throw Error(status, message.str());
}

inline void check_finite(double value, const char* name) {
  if (!std::isfinite(value)) fail(Status::NonFiniteInput, name, " must be finite, got ", value);
}

inline void check_not_null(const void* pointer, const char* name) {
  if (pointer == nullptr) fail(Status::NullPointer, name, " is a null pointer");
}

inline void check_count(int64_t value, const char* name, int64_t minimum = 1) {
  if (value < minimum) fail(Status::InvalidSize, name, " must be >= ", minimum, ", got ", value);
}

inline void check_alpha(double alpha, const char* name = "alpha") {
  check_finite(alpha, name);
  if (!(alpha > 0.0 && alpha < 1.0))
    fail(Status::InvalidParameter, name, " must lie strictly between 0 and 1, got ", alpha);
}

/// noise_tv: the per-copy total-variation distance of the caller's sampler from the exact Gaussian, a
/// finite number in [0, 1) (NonFiniteInput for NaN/Inf, InvalidParameter outside [0, 1)).
inline void check_noise_tv(double noise_tv) {
  check_finite(noise_tv, "noise_tv");
  if (!(noise_tv >= 0.0 && noise_tv < 1.0))
    fail(Status::InvalidParameter, "noise_tv must lie in [0, 1), got ", noise_tv);
}

/// rows * cols as a number of floats that a buffer can hold (throws InvalidSize on overflow).
inline int64_t checked_elements(int64_t rows, int64_t cols, const char* what) {
  constexpr int64_t limit = std::numeric_limits<int64_t>::max() / 8;
  if (rows < 0 || cols < 0 || (cols != 0 && rows > limit / cols))
    fail(Status::InvalidSize, what, " of ", rows, " x ", cols, " values is too large to address");
  return rows * cols;
}

}  // namespace detail
}  // namespace smoothgen
