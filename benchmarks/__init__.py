"""Benchmarks: each script prints a table measured in one run and writes CSV, markdown and a plot."""
