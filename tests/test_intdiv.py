"""math::IntDivider (csrc/math/intdiv.h), the 32-bit division of the CUDA focal loss kernel, checked
on the host: the same header compiled by the C++ compiler, against exact division at and around
every power of two of divisor and dividend."""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROGRAM = r"""
#include <cstdio>
#include <vector>
#include "math/intdiv.h"

int main() {
  using focalops::math::IntDivider;
  std::vector<uint32_t> values;
  for (int s = 0; s <= 31; ++s) {
    const int64_t p = int64_t{1} << s;
    for (int64_t d = p - 3; d <= p + 3; ++d) {
      if (d >= 1 && d < (int64_t{1} << 31)) values.push_back(static_cast<uint32_t>(d));
    }
  }
  for (uint32_t d : {3u, 5u, 7u, 9u, 80u, 81u, 91u, 641u, 1000u, 65521u, 1000003u, 2147483647u}) values.push_back(d);
  long checks = 0;
  for (uint32_t d : values) {
    const IntDivider div(d);
    std::vector<uint32_t> ns;
    for (int s = 0; s <= 31; ++s) {
      const int64_t p = int64_t{1} << s;
      for (int64_t n = p - 2; n <= p + 2; ++n) {
        if (n >= 0 && n < (int64_t{1} << 31)) ns.push_back(static_cast<uint32_t>(n));
      }
    }
    for (int64_t q = 0; q < 64; ++q) {  // around multiples of d
      for (int64_t r = -1; r <= 1; ++r) {
        const int64_t n = q * d + r;
        if (n >= 0 && n < (int64_t{1} << 31)) ns.push_back(static_cast<uint32_t>(n));
      }
    }
    const int64_t top = (int64_t{1} << 31) - 1;
    for (int64_t n = top - 2 * int64_t{d}; n <= top; n += 1 + d / 7) {
      if (n >= 0) ns.push_back(static_cast<uint32_t>(n));
    }
    for (uint32_t n : ns) {
      ++checks;
      if (div.div(n) != n / d) {
        std::printf("FAIL %u / %u: got %u, want %u\n", n, d, div.div(n), n / d);
        return 1;
      }
    }
  }
  std::printf("ok %ld\n", checks);
  return 0;
}
"""


@pytest.mark.skipif(shutil.which("c++") is None, reason="needs a C++ compiler")
def test_int_divider_matches_exact_division(tmp_path):
    src = tmp_path / "intdiv.cpp"
    exe = tmp_path / "intdiv"
    src.write_text(PROGRAM)
    build = subprocess.run(
        ["c++", "-std=c++17", "-O1", "-I", os.path.join(ROOT, "csrc"), str(src), "-o", str(exe)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stdout + run.stderr
