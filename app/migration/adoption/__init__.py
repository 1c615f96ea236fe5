"""Databases that releases before migrations left: recognised from the releases' own schemas
(`releases/*.schema.sql`), then stamped or rebuilt into the baseline, or refused untouched.
"""
