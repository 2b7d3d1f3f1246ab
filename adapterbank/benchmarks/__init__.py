"""Benchmarks that measure side by side in one run and report ratios (never asserted in tests)."""
