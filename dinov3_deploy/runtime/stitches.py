"""The names of the ways window logits become labels (`--stitch` of infer and bench), in a module that
imports nothing, so the commands' option lists do not pull torch in before a command runs.

  auto    triton on a GPU, torch on the CPU
  triton  kernels/stitch.py on the device (on the CPU only under TRITON_INTERPRET=1)
  torch   the reference slide_inference, fed the same logits
"""

STITCHES = ("auto", "triton", "torch")
