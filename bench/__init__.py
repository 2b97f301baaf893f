"""Benchmarks (results in docs/results/benchmarks.md)."""
