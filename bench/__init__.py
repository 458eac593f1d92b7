"""The benchmark and parity harness: timing of every backend behind one runner face, reports."""
