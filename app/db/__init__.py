"""Database layer: the metadata, models, engines and the safe-upgrade logic.

Importing the package imports no models, so the container's upgrade step runs
without SQLModel. `metadata` here is the shared MetaData; its tables are on it
once `app.db.models` is imported, so take it from there when you need them.
"""

from app.db.metadata import metadata

__all__ = ["metadata"]
