"""Database layer: the metadata, models, engines and the safe-upgrade logic."""

from app.db import models
from app.db.metadata import metadata

target_metadata = metadata

__all__ = ["metadata", "models", "target_metadata"]
