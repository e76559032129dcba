"""Benchmarks: a light load generator, the in-process ceiling, CPU time by step."""
