// A tiny self-contained test harness (no external test framework): TEST(name) registers a function,
// CHECK/CHECK_NEAR/CHECK_THROWS record failures without stopping the test, main() runs them all and
// returns non-zero if any check failed.
#pragma once

#include <cmath>
#include <cstdio>
#include <exception>
#include <functional>
#include <string>
#include <vector>

namespace harness {

struct Case {
  const char* name;
  std::function<void()> fn;
};

inline std::vector<Case>& registry() {
  static std::vector<Case> cases;
  return cases;
}

inline int& failures() {
  static int count = 0;
  return count;
}

struct Register {
  Register(const char* name, std::function<void()> fn) { registry().push_back({name, std::move(fn)}); }
};

inline void report(const char* file, int line, const std::string& what) {
  std::fprintf(stderr, "%s:%d: FAILED: %s\n", file, line, what.c_str());
  ++failures();
}

inline bool near(double a, double b, double rel, double abs_tol = 0.0) {
  if (std::isinf(a) || std::isinf(b)) return a == b;
  return std::fabs(a - b) <= abs_tol + rel * std::fmax(std::fabs(a), std::fabs(b));
}

inline int run_all() {
  int failed_cases = 0;
  for (const Case& c : registry()) {
    const int before = failures();
    try {
      c.fn();
    } catch (const std::exception& e) {
      report(__FILE__, __LINE__, std::string(c.name) + " threw " + e.what());
    }
    const bool ok = failures() == before;
    failed_cases += ok ? 0 : 1;
    std::printf("[%s] %s\n", ok ? " OK " : "FAIL", c.name);
  }
  std::printf("%zu passed, %d failed\n", registry().size() - failed_cases, failed_cases);
  return failed_cases == 0 ? 0 : 1;
}

}  // namespace harness

#define SG_CAT2(a, b) a##b
#define SG_CAT(a, b) SG_CAT2(a, b)
#define TEST(name)                                                                   \
  static void name();                                                                \
  static const harness::Register SG_CAT(register_, name)(#name, name);               \
  static void name()

#define CHECK(cond)                                                      \
  do {                                                                   \
    if (!(cond)) harness::report(__FILE__, __LINE__, "CHECK(" #cond ")"); \
  } while (0)

#define CHECK_NEAR(a, b, rel)                                                                             \
  do {                                                                                                    \
    const double sg_a = (a), sg_b = (b);                                                                  \
    if (!harness::near(sg_a, sg_b, (rel)))                                                                \
      harness::report(__FILE__, __LINE__,                                                                 \
                      std::string(#a " ~= " #b ": ") + std::to_string(sg_a) + " vs " + std::to_string(sg_b)); \
  } while (0)

// CHECK_THROWS(expr, status): expr throws smoothgen::Error with that status.
#define CHECK_THROWS(expr, expected)                                                                 \
  do {                                                                                               \
    bool sg_thrown = false;                                                                          \
    try {                                                                                            \
      (void)(expr);                                                                                  \
    } catch (const smoothgen::Error& e) {                                                            \
      sg_thrown = true;                                                                              \
      if (e.status() != (expected))                                                                  \
        harness::report(__FILE__, __LINE__, std::string(#expr " threw status ") + smoothgen::status_name(e.status())); \
    }                                                                                                \
    if (!sg_thrown) harness::report(__FILE__, __LINE__, #expr " did not throw");                     \
  } while (0)

#define HARNESS_MAIN \
  int main() { return harness::run_all(); }
