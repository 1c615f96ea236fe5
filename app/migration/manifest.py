"""The manifest of revision files, `migrations/manifest.txt`: its format, read and written here.

One line per revision, `STATUS REVISION SHA256 FILE_NAME` in chain order
(STATUS is `draft` or `released`), `amended ...` lines recording accepted
changes to released files, and a last line `head REVISION`. Lines starting
with `#` are comments. The authoring tools (`app.migration.authoring.manifest`)
keep the file in step with the revisions; the start-up check
(`app.migration.at_head`) trusts its head. Standard library only: the check
reads it before SQLAlchemy is imported.
"""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
MANIFEST_NAME = "manifest.txt"
UPDATE_COMMAND = "python -m app.migration.authoring.manifest"
HEADER = (
    "# SHA-256 of every revision file, in chain order; the last line names the single head.\n"
    f'# Written by `{UPDATE_COMMAND}`; see docs/migrations.md, "The manifest".\n'
)
ENTRY_STATUSES = ("released", "draft")


class ManifestError(Exception):
    """The manifest cannot be read or updated as asked; the message says what to do."""


@dataclass(frozen=True)
class Entry:
    status: str
    revision: str
    checksum: str
    file_name: str

    def line(self) -> str:
        return f"{self.status} {self.revision} {self.checksum} {self.file_name}"


@dataclass
class Manifest:
    entries: dict[str, Entry] = field(default_factory=dict)
    amendments: list[str] = field(default_factory=list)
    head: str | None = None

    def text(self) -> str:
        lines = [entry.line() for entry in self.entries.values()]
        lines += self.amendments
        lines.append(f"head {self.head}")
        return HEADER + "\n".join(lines) + "\n"


def manifest_path(migrations_dir: Path = MIGRATIONS_DIR) -> Path:
    return migrations_dir / MANIFEST_NAME


def read_manifest(path: Path) -> Manifest:
    """The manifest at `path` (empty when there is none); ManifestError names a bad line."""
    manifest = Manifest()
    if not path.exists():
        return manifest
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        words = line.split(" ")
        if not line.strip() or line.startswith("#"):
            continue
        if words[0] in ENTRY_STATUSES and len(words) == 4:
            manifest.entries[words[1]] = Entry(*words)
        elif words[0] == "amended":
            manifest.amendments.append(line)
        elif words[0] == "head" and len(words) == 2:
            manifest.head = words[1]
        else:
            raise ManifestError(f"{path}:{number}: cannot read {line!r}")
    return manifest


def file_checksum(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, as the manifest lists it."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
