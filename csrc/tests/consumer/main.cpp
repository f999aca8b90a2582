// Uses both faces of the installed core: the C ABI and the C++ API.
#include <cstdio>

#include <smoothgen/cohen.h>
#include <smoothgen/smoothgen_c.h>

int main() {
  const int64_t selection[] = {0, 100};
  const int64_t estimation[] = {2, 998};
  smoothgen_cohen_certificate c;
  if (smoothgen_cohen_certify(selection, estimation, 2, 0.5, 0.001, &c) != SMOOTHGEN_OK) {
    std::printf("consumer: error %s\n", smoothgen_last_error());
    return 1;
  }
  const smoothgen::CohenCertificate cpp = smoothgen::cohen_certify(selection, estimation, 2, 0.5, 0.001);
  if (cpp.radius != c.radius) return 1;
  std::printf("consumer: certified class %lld radius %.6f\n", static_cast<long long>(c.prediction), c.radius);
  return 0;
}
