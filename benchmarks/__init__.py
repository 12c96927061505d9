"""Benchmarks: scripts that measure; their results are recorded in BENCHMARKS.md."""
