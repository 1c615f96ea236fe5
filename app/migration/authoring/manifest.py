"""The manifest of revision files, `migrations/manifest.txt`, like Atlas's `atlas.sum`.

Each revision is listed with the SHA-256 of its file, in chain order, and the
last line names the single head (the format and its one reader are in
`app.migration.manifest`, which the start-up check uses too). Two branches
that each add a revision both rewrite that last line, so git reports a
conflict before the merge could produce two heads (the idea of
django-linear-migrations' `max_migration.txt`).

A revision starts as `draft`: while it is being written, `update` re-sums it.
`release` freezes every draft when a release is cut; from then on a changed
file fails the test suite, `update` refuses it, and the only way to accept the
change is `amend`, which appends an `amended` line with the old and new
checksums, the date and the reason. Run as
`python -m app.migration.authoring.manifest [update|check|release|amend REVISION --reason TEXT]`;
alembic.ini's post-write hook runs `hook FILE` (an update) after every
`alembic revision`.
"""

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from app.migration import revisions
from app.migration.errors import RevisionFileError, SeveralHeadsError
from app.migration.manifest import (
    MIGRATIONS_DIR,
    UPDATE_COMMAND,
    Entry,
    Manifest,
    ManifestError,
    file_checksum,
    manifest_path,
    read_manifest,
)

__all__ = ["Entry", "Manifest", "ManifestError", "manifest_path", "read_manifest"]


def revisions_in_order(migrations_dir: Path) -> list:
    """The revision scripts from base to head."""
    return list(reversed(list(revisions.script_directory(migrations_dir).walk_revisions())))


def single_head(migrations_dir: Path) -> str:
    try:
        return revisions.single_head(revisions.script_directory(migrations_dir))
    except SeveralHeadsError as exc:
        raise ManifestError(str(exc)) from None


def problems(migrations_dir: Path = MIGRATIONS_DIR) -> list[str]:
    """Why the manifest does not match the revision files; empty when it does."""
    manifest = read_manifest(manifest_path(migrations_dir))
    found = []
    on_disk = {}
    for script in revisions_in_order(migrations_dir):
        on_disk[script.revision] = script
        entry = manifest.entries.get(script.revision)
        name = Path(script.path).name
        if entry is None:
            found.append(
                f"revision {script.revision} ({name}) is not in the manifest: run "
                f"`{UPDATE_COMMAND}`"
            )
        elif entry.checksum != file_checksum(script.path):
            found.append(changed_message(entry, name))
    found += [
        f"revision {revision} is in the manifest but has no file: restore {entry.file_name}"
        for revision, entry in manifest.entries.items()
        if revision not in on_disk
    ]
    try:
        head = single_head(migrations_dir)
    except ManifestError as exc:
        return [*found, str(exc)]
    if manifest.head != head:
        found.append(
            f"the manifest names head {manifest.head}, but the revisions end at {head}: "
            f"run `{UPDATE_COMMAND}`"
        )
    return found


def changed_message(entry: Entry, name: str) -> str:
    if entry.status == "draft":
        return f"draft revision {entry.revision} ({name}) changed: run `{UPDATE_COMMAND}`"
    return (
        f"released revision {entry.revision} ({name}) changed: databases already ran the old "
        "file; undo the change and write a new revision, or, if it must stay, record it with "
        f"`{UPDATE_COMMAND} amend {entry.revision} --reason '...'`"
    )


def update(migrations_dir: Path = MIGRATIONS_DIR) -> Manifest:
    """List new revisions as drafts, re-sum the drafts, name the head; released ones stay."""
    path = manifest_path(migrations_dir)
    old = read_manifest(path)
    manifest = Manifest(amendments=old.amendments, head=single_head(migrations_dir))
    for script in revisions_in_order(migrations_dir):
        checksum, name = file_checksum(script.path), Path(script.path).name
        entry = old.entries.get(script.revision)
        if entry is not None and entry.status == "released" and entry.checksum != checksum:
            raise ManifestError(changed_message(entry, name))
        status = entry.status if entry is not None else "draft"
        manifest.entries[script.revision] = Entry(status, script.revision, checksum, name)
    path.write_text(manifest.text(), encoding="utf-8")
    return manifest


def release(migrations_dir: Path = MIGRATIONS_DIR) -> Manifest:
    """Freeze every draft: from now on its file may not change."""
    manifest = update(migrations_dir)
    manifest.entries = {
        revision: replace(entry, status="released") for revision, entry in manifest.entries.items()
    }
    manifest_path(migrations_dir).write_text(manifest.text(), encoding="utf-8")
    return manifest


def amend(revision: str, reason: str, migrations_dir: Path = MIGRATIONS_DIR) -> Manifest:
    """Accept a changed released revision, leaving a line that says when, why and from what."""
    path = manifest_path(migrations_dir)
    manifest = read_manifest(path)
    entry = manifest.entries.get(revision)
    if entry is None:
        raise ManifestError(f"revision {revision} is not in the manifest")
    if not reason.strip():
        raise ManifestError("say why the released revision changed: --reason '...'")
    script = revisions.script_directory(migrations_dir).get_revision(revision)
    checksum = file_checksum(script.path)
    if checksum == entry.checksum:
        raise ManifestError(f"revision {revision}'s file has not changed; nothing to amend")
    today = datetime.now(UTC).date().isoformat()
    reason_text = " ".join(reason.split())
    manifest.amendments.append(
        f"amended {revision} {entry.checksum} {checksum} {today} {reason_text}"
    )
    manifest.entries[revision] = replace(entry, checksum=checksum)
    path.write_text(manifest.text(), encoding="utf-8")
    return manifest


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=UPDATE_COMMAND, description="Keep migrations/manifest.txt in step with the revisions."
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("update", help="list new revisions, re-sum drafts, name the head (default)")
    commands.add_parser("check", help="exit 1 when the manifest does not match the revisions")
    commands.add_parser("release", help="freeze every draft revision (when cutting a release)")
    amend_parser = commands.add_parser("amend", help="accept a changed released revision")
    amend_parser.add_argument("revision")
    amend_parser.add_argument("--reason", required=True, help="why it had to change")
    hook = commands.add_parser("hook", help="alembic's post-write hook: update for this file")
    hook.add_argument("revision_file", type=Path)
    return parser.parse_args(argv)


def main(argv: Sequence[str] = ()) -> int:
    args = parse_args(argv)
    migrations_dir = MIGRATIONS_DIR
    if args.command == "hook":
        migrations_dir = args.revision_file.resolve().parents[1]
    try:
        if args.command == "check":
            found = problems(migrations_dir)
            for problem in found:
                print(f"manifest: {problem}", file=sys.stderr)
            return 1 if found else 0
        if args.command == "release":
            release(migrations_dir)
        elif args.command == "amend":
            amend(args.revision, args.reason, migrations_dir)
        else:
            update(migrations_dir)
    except (ManifestError, RevisionFileError) as exc:
        print(f"manifest: error: {exc}", file=sys.stderr)
        return 1
    print(f"manifest: {manifest_path(migrations_dir)} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
