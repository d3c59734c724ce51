"""Benchmarks run by `make bench`: throughput numbers measured side by side."""
