"""Benchmarks (results in docs/benchmarks.md)."""
