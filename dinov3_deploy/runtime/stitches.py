"""The names of the ways window logits become labels (`--stitch` of infer and bench), in a module that
imports nothing, so the commands' option lists do not pull torch in before a command runs.

  auto     triton on a GPU, torch on the CPU; a Mask2Former artifact: chunked
  triton   kernels/stitch.py on the device (on the CPU only under TRITON_INTERPRET=1)
  torch    the reference slide_inference, fed the same logits (Mask2Former: the graph's scores output)
  chunked  Mask2Former only: scores accumulated from the class and mask logits in query and class
           chunks (runtime/m2f_stitch.py), never a window's full-resolution scores for every class
"""

STITCHES = ("auto", "triton", "torch", "chunked")
