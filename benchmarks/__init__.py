"""Benchmarks: commands that print figures and ratios (see README.md); never timed assertions in tests."""
