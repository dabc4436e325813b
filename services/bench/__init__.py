"""Benchmarks behind `driftline bench TARGET`: one module per target."""
