#include "smoothgen/error.h"

namespace smoothgen {

const char* status_name(Status status) noexcept {
  switch (status) {
    case Status::Ok: return "ok";
    case Status::NullPointer: return "null pointer";
    case Status::InvalidSize: return "invalid size";
    case Status::InvalidParameter: return "invalid parameter";
    case Status::NonFiniteInput: return "non-finite input";
    case Status::InvalidInput: return "invalid input";
    case Status::NonFiniteResult: return "non-finite result";
    case Status::OutOfMemory: return "out of memory";
    case Status::Internal: return "internal error";
  }
  return "unknown status";
}

}  // namespace smoothgen
