"""pytest-alembic set up exactly as its documentation shows, nothing of ours added.

`alembic_config` names the project's alembic.ini; `alembic_engine` is a plain
`sqlalchemy.create_engine`, on a SQLite file, on SQLite in memory
(pytest-alembic's own default) and on an empty PostgreSQL database. env.py
gets no settings: it adapts the engine it is handed for each run, and a SQLite
file's backups go to `backups/` beside it.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def alembic_config() -> dict[str, str]:
    return {"file": str(REPO_ROOT / "alembic.ini")}


@pytest.fixture(params=["sqlite", "sqlite in memory", "postgres"])
def alembic_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sqlalchemy.Engine]:
    """The PostgreSQL database comes from tests/conftest.py's pool (which fails under CI=true
    when the server is unreachable); only its URL is used."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'anibridge_jobs.db'}"
    elif request.param == "sqlite in memory":
        url = "sqlite:///"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = sqlalchemy.create_engine(url)
    yield engine
    engine.dispose()
