"""The migration subsystem: what `alembic` and the service run to bring a database to head.

Run-time modules live here (the guarded run, adoption/, backup and restore,
locking, status, the fast at-head check); the tools for writing revisions live
in `authoring/`. Nothing here imports SQLModel or the service (`app.data`,
`app.api`, `app.main`): tests/test_layout.py checks it.
"""
