"""Flower strategies (Message API) of fl-dp: one strategy class that drives any algorithm of :mod:`fl_dp`."""

from strategies.fl_dp_strategy import FlDpStrategy

__all__ = ["FlDpStrategy"]
