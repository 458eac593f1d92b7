// PIL's bilinear resize of a uint8 RGB image (Image.resize(size, Image.BILINEAR)), byte for byte:
// the Mask2Former protocol resizes each TTA view from the uint8 image this way
// (reference/training/transforms.py resize), so the C++ views must hold PIL's bytes.
// PIL's arithmetic (libImaging/Resample.c): a triangle filter widened by the scale when shrinking
// (an antialiasing filter, not PyTorch's two-tap bilinear), weights computed in double, normalised
// to sum 1, rounded to 22-bit fixed point; a horizontal pass, its result rounded to uint8, then a
// vertical pass over those bytes. An axis whose size does not change is not resampled.
#pragma once

#include "dinov3_deploy/image.h"

namespace dinov3_deploy {

Image resize_pil_bilinear(const Image& src, int out_h, int out_w);

}  // namespace dinov3_deploy
