"""No test, helper or benchmark names a revision of migrations/versions.

The head, the chain and the baseline are read from the script directory
(tests/chain.py), so a correct new revision needs no edit of any test. This
guards that: a revision id of migrations/versions written anywhere under tests/
or bench/ (code, fixture revisions, data) fails here, naming the file and line.
"""

from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from app.migration.revisions import PROJECT_ROOT
from tests.chain import CHAIN

SEARCHED = ("tests", "bench")


def searched_files(root: Path) -> Iterator[Path]:
    for folder in SEARCHED:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                yield path


def lines_naming(revisions: Iterable[str], root: Path) -> list[str]:
    """`file:line: names revision R` for every line under tests/ and bench/ naming one."""
    revisions = tuple(revisions)
    found = []
    for path in searched_files(root):
        text = path.read_bytes().decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            found += [
                f"{path.relative_to(root)}:{number}: names revision {revision}; read it from "
                "the script directory (tests/chain.py: BASELINE, HEAD, CHAIN)"
                for revision in revisions
                if revision in line
            ]
    return found


@pytest.mark.timeout(60)
def test_no_file_under_tests_or_bench_names_a_revision() -> None:
    found = lines_naming(CHAIN, PROJECT_ROOT)
    assert not found, "\n".join(found)


def test_a_named_revision_is_found_with_its_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "bench").mkdir()
    (tmp_path / "tests" / "data").mkdir(parents=True)
    (tmp_path / "tests" / "data" / "fixture.py").write_text(f'\ndown_revision = "{CHAIN[-1]}"\n')

    assert lines_naming(CHAIN, tmp_path) == [
        f"tests/data/fixture.py:2: names revision {CHAIN[-1]}; read it from the script "
        "directory (tests/chain.py: BASELINE, HEAD, CHAIN)"
    ]
