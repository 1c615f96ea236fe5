"""The service's data layer: the one MetaData, the models on it, sessions and data access.

`metadata` is named here so that tools which walk this package (pytest-alembic's
`test_all_models_register_on_metadata`) find the MetaData every model registers on.
"""

from app.data.metadata import metadata

__all__ = ["metadata"]
