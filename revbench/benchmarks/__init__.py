"""Benchmark commands: each prints a table of measured figures."""
