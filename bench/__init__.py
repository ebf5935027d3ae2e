"""Benchmarks: loader throughput against the model-only bound (see issue 7)."""
