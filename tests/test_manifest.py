"""The manifest of revision files (`migrations/manifest.txt`): checked, updated, conflicting.

The first test is the one that guards the repository: it fails when a listed
revision's file changed or a revision is missing from the manifest. The others
work on copies of `migrations/` and on a scratch git repository.
"""

import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.migration.authoring.manifest import (
    ManifestError,
    amend,
    manifest_path,
    problems,
    read_manifest,
    release,
    update,
)
from app.migration.manifest import Entry
from app.migration.revisions import PROJECT_ROOT
from tests.chain import HEAD, InjectedRevision, plant_revisions

MIGRATIONS = PROJECT_ROOT / "migrations"
NEW_REVISION = "0a1b2c3d4e5f"
OTHER_REVISION = "f5e4d3c2b1a0"


def test_the_manifest_matches_the_revision_files() -> None:
    assert problems() == []


def test_the_manifest_names_the_single_head_last() -> None:
    lines = manifest_path().read_text().splitlines()

    assert lines[-1] == f"head {HEAD}"


def test_released_entries_come_first_then_drafts() -> None:
    """A new revision is listed as a draft (the manifest hook); `release` freezes them all."""
    statuses = [entry.status for entry in read_manifest(manifest_path()).entries.values()]
    released = statuses.count("released")

    assert released > 0
    assert statuses == ["released"] * released + ["draft"] * (len(statuses) - released)


def released_entries(migrations: Path) -> list[Entry]:
    entries = read_manifest(manifest_path(migrations)).entries.values()
    return [entry for entry in entries if entry.status == "released"]


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    copy = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def add_revision(migrations: Path, revision: str = NEW_REVISION) -> Path:
    body = "    op.execute(sa.text('SELECT 1'))"
    (path,) = plant_revisions(migrations.parent, [InjectedRevision(revision, "Extra", body)])
    return path


def edit_one_byte(path: Path, rng: random.Random) -> None:
    """Change the file a little, somewhere: a comment line added at a random line."""
    lines = path.read_text().splitlines(keepends=True)
    at = rng.randrange(len(lines) + 1)
    lines.insert(at, f"# edited {rng.random()}\n")
    path.write_text("".join(lines))


@pytest.mark.parametrize("seed", range(6))
def test_any_edit_of_a_released_revision_is_caught(migrations: Path, seed: int) -> None:
    rng = random.Random(seed)
    target = migrations / "versions" / rng.choice(released_entries(migrations)).file_name
    edit_one_byte(target, rng)

    found = problems(migrations)

    assert len(found) == 1 and "released revision" in found[0] and target.name in found[0]
    with pytest.raises(ManifestError, match="released revision"):
        update(migrations)


def test_a_new_revision_missing_from_the_manifest_is_caught(migrations: Path) -> None:
    add_revision(migrations)

    found = problems(migrations)

    assert any(f"revision {NEW_REVISION}" in p and "not in the manifest" in p for p in found)
    assert any("names head" in p for p in found)


def test_update_lists_a_new_revision_as_draft_and_resums_it_while_draft(migrations: Path) -> None:
    path = add_revision(migrations)
    update(migrations)
    assert problems(migrations) == []
    assert read_manifest(manifest_path(migrations)).entries[NEW_REVISION].status == "draft"
    assert manifest_path(migrations).read_text().splitlines()[-1] == f"head {NEW_REVISION}"

    edit_one_byte(path, random.Random(1))
    assert "draft revision" in problems(migrations)[0]
    update(migrations)
    assert problems(migrations) == []


def test_release_freezes_drafts_and_amend_leaves_a_trace(migrations: Path) -> None:
    path = add_revision(migrations)
    update(migrations)
    release(migrations)
    before = read_manifest(manifest_path(migrations)).entries[NEW_REVISION].checksum
    edit_one_byte(path, random.Random(2))
    with pytest.raises(ManifestError):
        update(migrations)

    amend(NEW_REVISION, "fix a typo in a comment", migrations)

    manifest = read_manifest(manifest_path(migrations))
    assert problems(migrations) == []
    (trace,) = manifest.amendments
    assert trace.startswith(
        f"amended {NEW_REVISION} {before} {manifest.entries[NEW_REVISION].checksum} "
    )
    assert trace.endswith("fix a typo in a comment")
    assert manifest_path(migrations).read_text().splitlines()[-1] == f"head {NEW_REVISION}"


def test_amend_refuses_an_unchanged_file_and_a_missing_reason(migrations: Path) -> None:
    entry = released_entries(migrations)[-1]
    with pytest.raises(ManifestError, match="has not changed"):
        amend(entry.revision, "no reason to", migrations)
    edit_one_byte(migrations / "versions" / entry.file_name, random.Random(3))
    with pytest.raises(ManifestError, match="say why"):
        amend(entry.revision, "  ", migrations)


def git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_two_branches_that_each_add_a_revision_conflict_in_git(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    migrations = repo / "migrations"
    shutil.copytree(MIGRATIONS, migrations, ignore=shutil.ignore_patterns("__pycache__"))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "released")
    for branch, revision in (("a", NEW_REVISION), ("b", OTHER_REVISION)):
        git(repo, "checkout", "-q", "-b", branch, "main")
        add_revision(migrations, revision)
        update(migrations)
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", f"add {revision}")
    git(repo, "checkout", "-q", "main")
    assert git(repo, "merge", "-q", "a").returncode == 0

    merged = git(repo, "merge", "b")

    assert merged.returncode != 0
    assert "CONFLICT (content): Merge conflict in migrations/manifest.txt" in merged.stdout


def test_manifest_command_checks_and_reports_in_one_line_each() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.migration.authoring.manifest", "check"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stderr) == (0, "")
