// Large CPU outputs that are allocated again at every training step.
//
// A fresh block of tens of MB costs one page fault per 4 KB page when it is first written: 9 ms
// for the 38 MB focal-loss gradient of 120k anchors x 80 classes on a 2-core EPYC, as long as
// the arithmetic that fills it. glibc hands every block above 32 MB back to the OS when it is
// freed, so each step pays that again. reusable_empty_like keeps the one most recently freed block
// of at least 4 MB and hands it out again for a request of the same size (the next step's
// gradient): at most one such block is held while no tensor uses it.
#pragma once

#include <ATen/ATen.h>

namespace focalops {
namespace cpu {

// at::empty_like(x) for a contiguous CPU tensor x, from the kept block when it has the size.
at::Tensor reusable_empty_like(const at::Tensor& x);

}  // namespace cpu
}  // namespace focalops
