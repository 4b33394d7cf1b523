"""Benchmarks: ``make bench`` (full) and ``make bench-quick`` (CI). See ``bench/run.py``.

Every figure is a ratio or a count measured in the same run as its baseline, on 127.0.0.1: the
simulator serves the bytes (in a process of its own), Azurite stores them.
"""
