"""Verification: parity metrics and the one thresholds table (`parity`), and the check of an
artifact's backends against the fp32 PyTorch reference (`verify`)."""
