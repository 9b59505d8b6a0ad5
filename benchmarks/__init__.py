"""Benchmarks of the library's fast paths against straightforward references (``make bench``).

See ``docs/benchmarks.md`` for the method and the measured tables.
"""
