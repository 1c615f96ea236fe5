"""The lint's verdicts against lock hazards measured on PostgreSQL (tests/lock_corpus.py).

Every revision of tests/data/lock_corpus runs on tables with rows while a second
session tries to read and write them; the lint must flag exactly those whose
measurement shows a hazard. A rule that drifts (flags a safe revision or
misses a hazard) fails here, and so does a corpus revision added without the
lint agreeing with what PostgreSQL does.
"""

import pytest
from sqlalchemy.engine import URL

from app.migration.authoring.lint import lint_revision
from tests.conftest import PostgresDatabasePool
from tests.lock_corpus import Measured, corpus, measure

CORPUS = {script.revision: script for script in corpus()}


@pytest.fixture(scope="module")
def corpus_database(postgres_pool: PostgresDatabasePool):
    url = postgres_pool.take()
    yield url
    postgres_pool.give_back(url)


def test_the_corpus_holds_at_least_40_revisions() -> None:
    assert len(CORPUS) >= 40


@pytest.mark.postgres
@pytest.mark.timeout(30)
@pytest.mark.parametrize("revision", sorted(CORPUS))
def test_the_lint_flags_a_revision_exactly_when_postgresql_shows_a_hazard(
    corpus_database: URL, revision: str
) -> None:
    script = CORPUS[revision]
    measured: Measured = measure(corpus_database, script)
    findings = [str(finding) for finding in lint_revision(script)]

    assert bool(findings) == measured.hazard, f"measured {measured}; lint {findings}"
