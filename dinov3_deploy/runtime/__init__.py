"""Running artifacts: every backend behind one face (`runners`) and predictions on images
(`inference`: sliding window, depth maps, classes, features)."""
