"""Benchmarks for OpenCDP (``make bench``); figures are recorded in BENCHMARKS.md."""
