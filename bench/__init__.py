"""Benchmarks; each script prints one summary line."""
