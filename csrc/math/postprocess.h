// Per-candidate math of RetinaNet post-processing shared by the CPU and CUDA kernels:
// the class score of a logit and the clip of a decoded box to its image.
#pragma once

#include "math/common.h"

namespace focalops {
namespace math {

// sigmoid(x) by the formula torch.sigmoid uses (1 / (1 + exp(-x))); 0 for x below the exp range.
template <typename T>
FO_HD T sigmoid_score(T x) {
  return T(1) / (T(1) + exp_(-x));
}

// torchvision clip_boxes_to_image: x to [0, width], y to [0, height], in place.
template <typename T>
FO_HD void clip_box(T* box, T height, T width) {
  for (int k = 0; k < 4; ++k) {
    const T hi = (k % 2 == 0) ? width : height;
    T v = box[k] < T(0) ? T(0) : box[k];
    box[k] = v > hi ? hi : v;
  }
}

}  // namespace math
}  // namespace focalops
