"""Benchmarks: scripts that print ratios against a baseline run in the same process.

Run each as a module from the checkout: ``.venv/bin/python -m benchmarks.bench_search``.
"""
