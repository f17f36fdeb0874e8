"""Benchmark suite for raytrade.

Run every benchmark with ``python -m benchmarks`` (or only some: ``python -m benchmarks features env``).
Each benchmark times a candidate against a named baseline measured in the same run, reports medians
over repeats and their ratio, and writes ``benchmarks/results/<name>.json`` and ``<name>.md``.
"""
