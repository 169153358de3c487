"""The `rfpipe` command line: predict, bench, parity, export, demo, serve and stream.

Nothing in the library imports this package; it imports the library.
"""
