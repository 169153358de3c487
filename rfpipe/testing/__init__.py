"""Helpers for tests, benchmarks and the demo: untrained model packages built offline.

Nothing in the library imports this package.
"""
