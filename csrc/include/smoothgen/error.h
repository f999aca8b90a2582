// smoothgen C++ core: status codes and the exception type of the C++ API.
//
// The C++ API (stats.h, cohen.h, center.h) reports every failure by throwing smoothgen::Error, whose
// status() is one of the codes below. The C ABI (smoothgen_c.h) catches everything and returns the same
// codes, so that no exception ever crosses it.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace smoothgen {

/// Why a call failed. The numeric values are part of the C ABI (smoothgen_c.h): never renumber.
enum class Status : int {
  Ok = 0,
  NullPointer = 1,       ///< a required pointer argument was null
  InvalidSize = 2,       ///< a count or size is zero, negative, or too large to address
  InvalidParameter = 3,  ///< a parameter outside its domain (alpha not in (0, 1), sigma <= 0, ...)
  NonFiniteInput = 4,    ///< a NaN or infinite value in an input buffer or scalar
  InvalidInput = 5,      ///< a finite input that cannot be used (a zero vector for the cosine metric, ...)
  NonFiniteResult = 6,   ///< a computed distance overflowed to infinity (inputs of extreme scale)
  OutOfMemory = 7,       ///< a scratch allocation failed
  Internal = 8,          ///< a failure inside a special function (Boost.Math evaluation error) or a bug
};

/// Short name of a status code ("ok", "null pointer", ...).
const char* status_name(Status status) noexcept;

/// The exception thrown by the C++ API; what() holds a message that names the offending argument.
class Error : public std::runtime_error {
 public:
  Error(Status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  Status status() const noexcept { return status_; }

 private:
  Status status_;
};

}  // namespace smoothgen
