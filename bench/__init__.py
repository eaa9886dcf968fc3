"""Benchmarks: `python -m bench` runs every `*_bench` module in this package."""
