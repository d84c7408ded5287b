"""The float polynomials of csrc/math/common.h (exp_poly, log_poly: the x86 default build's box
coding; exp_nonpos_poly, log_unit_poly: every CPU build's focal loss), checked on the host: the
header compiled by the C++ compiler as the scalar instantiation (the vector lanes run the same
operations in the same order), against libm in double rounded to float, over every 61st float
and the special values (within 1-2 ulp of the correctly rounded result)."""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROGRAM = r"""
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include "math/common.h"

using namespace focalops::math;

// Position of f on the float line (adjacent floats differ by 1; -0 == +0).
static int64_t ordinal(float f) {
  int32_t i;
  std::memcpy(&i, &f, sizeof(i));
  return i < 0 ? -static_cast<int64_t>(i & 0x7fffffff) : i;
}

static bool same(float a, float b) { return (std::isnan(a) && std::isnan(b)) || a == b; }

struct Worst {
  int64_t ulp = 0;
  float at = 0.f, got = 0.f, want = 0.f;
  long bad_special = 0;
  float special_at = 0.f;
};

template <typename F, typename G>
static void check(const char* name, F f, G ref, bool (*domain)(float)) {
  Worst w;
  long n = 0;
  auto one = [&](float x) {
    if (!domain(x)) return;
    ++n;
    const float got = f(x);
    const float want = static_cast<float>(ref(static_cast<double>(x)));
    if (!std::isfinite(want) || !std::isfinite(got) || want == 0.f) {
      if (!same(got, want) && !w.bad_special++) w.special_at = x;
      return;
    }
    const int64_t d = ordinal(got) > ordinal(want) ? ordinal(got) - ordinal(want) : ordinal(want) - ordinal(got);
    if (d > w.ulp) w = Worst{d, x, got, want, w.bad_special, w.special_at};
  };
  for (uint64_t b = 0; b < (uint64_t{1} << 32); b += 61) {  // 61: odd, reaches every mantissa pattern
    float x;
    const uint32_t u = static_cast<uint32_t>(b);
    std::memcpy(&x, &u, sizeof(x));
    one(x);
  }
  const float specials[] = {0.f, -0.f, INFINITY, -INFINITY, NAN, -NAN, 1.f, -1.f, 1e-45f, -1e-45f, 1.17549435e-38f,
                            3.4028235e38f, -3.4028235e38f, 88.72283f, 88.72284f, -87.33655f, -103.27893f,
                            -103.97208f, -104.f, 0.5f, 2.f};
  for (float x : specials) one(x);
  std::printf("%s n=%ld max_ulp=%" PRId64 " at=%.9g got=%.9g want=%.9g bad_special=%ld special_at=%.9g\n", name, n,
              w.ulp, w.at, w.got, w.want, w.bad_special, w.special_at);
}

static bool any(float) { return true; }
// The focal loss's own domains: exp_nonpos_poly is 0 below the normal range (-87.3), log_unit_poly
// -inf below it (their callers' limits); a NaN in log_unit_poly's argument reaches the loss through
// the other factors.
static bool nonpos(float x) { return !(x > 0.f) && !(x < -87.3f); }
static bool unit(float x) { return x == 0.f || (x >= 1.17549435e-38f && x <= 1.f); }

int main() {
  check("exp_poly", [](float x) { return exp_poly(x); }, [](double x) { return std::exp(x); }, any);
  check("log_poly", [](float x) { return log_poly(x); }, [](double x) { return std::log(x); }, any);
  check("exp_nonpos_poly", [](float x) { return exp_nonpos_poly(x); }, [](double x) { return std::exp(x); }, nonpos);
  check("log_unit_poly", [](float x) { return log_unit_poly(x); }, [](double x) { return std::log(x); }, unit);
}
"""


def _results(tmp_path, flags):
    src, exe = tmp_path / "elementary.cpp", tmp_path / "elementary"
    src.write_text(PROGRAM)
    cxx = shutil.which("c++")
    subprocess.run([cxx, "-std=c++17", "-O2", "-ffp-contract=off", *flags, "-I", os.path.join(ROOT, "csrc"), str(src),
                    "-o", str(exe)], check=True)  # fmt: skip
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    results = {}
    for line in out.splitlines():
        name, *fields = line.split()
        results[name] = {k: float(v) for k, v in (f.split("=") for f in fields)}
    return results


# Measured bounds (every 61st float): the atanh series of log_unit_poly rounds once more.
MAX_ULP = {"exp_poly": 1, "log_poly": 1, "exp_nonpos_poly": 1, "log_unit_poly": 2}


# The builds' two roundings of the polynomials: a * b + c rounded twice (x86 default build,
# no FMA) and fused (the avx2 / avx512 builds, ARM).
@pytest.mark.skipif(shutil.which("c++") is None, reason="needs a C++ compiler")
@pytest.mark.parametrize("flags", [[], ["-mfma"]], ids=["unfused", "fma"])
def test_polynomials_within_their_ulp_bounds_and_exact_at_special_values(tmp_path, flags):
    if flags and os.uname().machine not in ("x86_64", "i686"):
        pytest.skip("-mfma is an x86 flag")
    results = _results(tmp_path, flags)
    assert set(results) == {"exp_poly", "log_poly", "exp_nonpos_poly", "log_unit_poly"}
    for name, r in results.items():
        assert r["n"] > 1_000_000, (name, r)
        # Results that are inf, NaN, 0 or subnormal in float: equal to libm's (bit for bit but NaN's sign).
        assert r["bad_special"] == 0, (name, r)
        assert r["max_ulp"] <= MAX_ULP[name], (name, r)
