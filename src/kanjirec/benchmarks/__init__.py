"""Benchmark commands: each prints figures, ratios where two things are compared in one run."""
