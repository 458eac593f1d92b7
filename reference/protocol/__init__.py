"""The inference protocol, shared by training, evaluation and deployment: the official sliding
window (geometry, stitching), image reading, and the built-in synthetic images that calibration,
verification and the demos run on. It sits below both `training/` and `dinov3_deploy`, so each
imports it downward and the C++ runtime mirrors one definition of the window geometry."""
