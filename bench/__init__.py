"""Benchmarks of the migration step: start-up, fresh database, table rebuild, backup, adoption.

Run `make bench` (or `.venv/bin/python -m bench --help`); results are in docs/performance.md.
"""
