"""Schemas of released databases made before migrations existed, kept as data."""
