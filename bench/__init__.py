"""Benchmarks of syntho-agent against its baselines (see bench/RESULTS.md); not tests."""
