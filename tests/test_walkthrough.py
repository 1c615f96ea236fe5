"""docs/migrations.md's walkthrough, replayed in a scratch clone of the repository.

The doc is the one source: the test reads the section "Walkthrough: a series of
revisions" and does what each `###` step shows, in order:

* a ```console block: each `$ command` runs in the clone (bash, with the venv's
  bin first on PATH and DATA_DIR in a temporary directory, as the guide's other
  commands were run). It must exit 0, unless the next command is `echo $?`,
  which prints the status the doc shows. The lines the doc shows under a command
  must be whole lines of its output, in that order; `...` stands for any text.
* a ```python block whose first line is a comment naming a file:
  `# app/data/models.py (changed classes)` replaces each class of the block in
  the models (a new class is appended); `# <path> (new file)` writes the file;
  `# <path> (added to NAME)` adds the block's entries at the end of the
  module-level dict NAME;
  `# migrations/versions/<name> (as alembic wrote it)` must equal the file the
  command before it generated; `# migrations/versions/<name> (edited)` replaces
  that file (its `Revises:` and `*_revision` lines must be alembic's).

Revision ids and file-name dates differ per run. The doc's are variables: the
first output line that shows one binds it to this run's (a file name binds its
date, its id and so the file), and every later mention, in output or in a file,
is substituted (in commands too). Only the `Create Date:` line is taken from the
generated file.

After each step the clone's own migration checks run on both engines:
pytest-alembic's tests, the round trip, the revision-file tests and the check
that no test names a revision, with the test files the walkthrough added (two
pytest subprocesses side by side, PostgreSQL's tests and the rest), and the
lint, the manifest check and ruff.
"""

import ast
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.migration.revisions import PROJECT_ROOT

DOC = PROJECT_ROOT / "docs" / "migrations.md"
SECTION = "## Walkthrough: a series of revisions"
VENV_BIN = Path(sys.executable).parent
CHECK_TESTS = (
    "tests/test_migrations.py",
    "tests/pytest_alembic_docs",
    "tests/test_round_trip.py",
    "tests/test_revision_files.py",
    "tests/test_suite_names_no_revision.py",
)
CHECK_COMMANDS = (
    "python -m app.migration.authoring.lint",
    "python -m app.migration.authoring.manifest check",
    "ruff check .",
    "ruff format --check .",
)
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.DOTALL | re.MULTILINE)
FILE_MARKER = re.compile(
    r"^# (?P<path>\S+) \((?P<kind>changed classes|new file|as alembic wrote it|edited"
    r"|added to (?P<dict>[A-Za-z_]\w*))\)$"
)
REVISION_NAME = re.compile(
    r"(?P<date>\d{4}_\d{2}_\d{2}_\d{4})-(?P<id>[0-9a-f]{12})_(?P<slug>\w+)\.py"
)
TOKEN = re.compile(
    rf"(?P<wild>\.\.\.)|(?P<name>{REVISION_NAME.pattern})|\b(?P<rev>[0-9a-f]{{12}})\b"
)
CREATE_DATE = re.compile(r"^Create Date: .*$", re.MULTILINE)
CHAIN_LINES = re.compile(r"^(Revises:|revision:|down_revision:).*$", re.MULTILINE)
TEST_HALVES = ("postgres", "not postgres")
"""The checks as two pytest processes, one per core: PostgreSQL's tests, and the rest."""
COMMAND_TIMEOUT_S = 120
CHECK_TIMEOUT_S = 300


@dataclass
class Block:
    lang: str
    text: str
    line: int


@dataclass
class Step:
    title: str
    blocks: list[Block]


def walkthrough_steps(doc: str) -> list[Step]:
    """The `###` steps of the walkthrough section, each with its code blocks in order."""
    start = doc.index(SECTION)
    end = doc.find("\n## ", start + len(SECTION))
    section = doc[start : end if end != -1 else len(doc)]
    first_line = doc.count("\n", 0, start) + 1
    steps: list[Step] = []
    for match in FENCE.finditer(section):
        heading = section.rfind("\n### ", 0, match.start())
        title = section[heading + 5 : section.index("\n", heading + 1)] if heading != -1 else ""
        if not steps or steps[-1].title != title:
            steps.append(Step(title, []))
        line = first_line + section.count("\n", 0, match.start())
        steps[-1].blocks.append(Block(match[1], match[2], line))
    return steps


@dataclass
class Bindings:
    """The doc's revision ids and revision file names, bound to this run's."""

    ids: dict[str, str] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)

    def pattern(self, expected: str) -> tuple[re.Pattern, dict[str, str]]:
        """A regex for one expected output line, and which doc token each new group binds."""
        parts, groups, seen = [], {}, {}
        position = 0
        for token in TOKEN.finditer(expected):
            parts.append(re.escape(expected[position : token.start()]))
            position = token.end()
            if token["wild"]:
                parts.append(".*")
            elif token["name"]:
                parts.append(self._name_pattern(token, groups, seen))
            else:
                parts.append(self._id_pattern(token["rev"], groups, seen))
        parts.append(re.escape(expected[position:]))
        return re.compile("".join(parts)), groups

    def _id_pattern(self, doc_id: str, groups: dict, seen: dict) -> str:
        if doc_id in self.ids:
            return re.escape(self.ids[doc_id])
        if doc_id in seen:
            return f"(?P={seen[doc_id]})"
        seen[doc_id] = groups_key = f"g{len(groups)}"
        groups[groups_key] = doc_id
        return f"(?P<{groups_key}>[0-9a-f]{{12}})"

    def _name_pattern(self, token: re.Match, groups: dict, seen: dict) -> str:
        doc_name = token["name"]
        if doc_name in self.names:
            return re.escape(self.names[doc_name])
        key = f"g{len(groups)}"
        groups[key] = doc_name
        rev = self._id_pattern(token["id"], groups, seen)
        return rf"(?P<{key}>\d{{4}}_\d{{2}}_\d{{2}}_\d{{4}}-{rev}_{re.escape(token['slug'])}\.py)"

    def bind(self, match: re.Match, groups: dict[str, str]) -> None:
        for key, doc_token in groups.items():
            actual = match[key]
            table = self.names if REVISION_NAME.fullmatch(doc_token) else self.ids
            assert actual not in {v for k, v in table.items() if k != doc_token}, (
                f"{actual} is bound to two of the doc's tokens"
            )
            table[doc_token] = actual

    def substitute(self, text: str) -> str:
        """The doc's text with every bound file name and id replaced by this run's."""

        def replace(token: re.Match) -> str:
            if token["wild"]:
                return token[0]
            if token["name"]:
                assert token["name"] in self.names, f"no command generated {token['name']}"
                return self.names[token["name"]]
            assert token["rev"] in self.ids, f"no command output showed revision {token['rev']}"
            return self.ids[token["rev"]]

        return TOKEN.sub(replace, text)


class Clone:
    """A scratch git repository holding the working tree's files, and a shell in it."""

    def __init__(self, root: Path, data_dir: Path) -> None:
        self.root = root
        environ = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "VIRTUAL_ENV"}}
        environ.update(
            PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            PYTHONPATH=str(root),
            PYTHONUNBUFFERED="1",
            DATA_DIR=str(data_dir),
            GIT_AUTHOR_NAME="Walkthrough",
            GIT_AUTHOR_EMAIL="walkthrough@example.invalid",
            GIT_COMMITTER_NAME="Walkthrough",
            GIT_COMMITTER_EMAIL="walkthrough@example.invalid",
        )
        self.environ = environ

    @classmethod
    def of_working_tree(cls, destination: Path, data_dir: Path) -> "Clone":
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
        for name in filter(None, listed.split("\0")):
            source = PROJECT_ROOT / name
            if source.is_file():
                (destination / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, destination / name)
        clone = cls(destination, data_dir)
        for command in ("git init -q -b main", "git add -A", "git commit -qm 'the working tree'"):
            clone.ok(command)
        return clone

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-c", command],
            cwd=self.root,
            env=self.environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ok(self, command: str, timeout: float = COMMAND_TIMEOUT_S) -> str:
        result = self.run(command, timeout)
        assert result.returncode == 0, f"`{command}` exited {result.returncode}:\n{result.stdout}"
        return result.stdout


def commands_of(console: str) -> list[tuple[str, list[str]]]:
    """Each `$ command` of a console block with the output lines the doc shows under it."""
    commands: list[tuple[str, list[str]]] = []
    for line in console.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        elif line.strip():
            assert commands, f"output before any command: {line!r}"
            commands[-1][1].append(line)
    return commands


def assert_output_shows(output: str, expected: list[str], bindings: Bindings, where: str) -> None:
    """The expected lines match whole output lines, in order; new tokens get bound."""
    remaining = iter(line.rstrip() for line in output.splitlines())
    for wanted in expected:
        pattern, groups = bindings.pattern(wanted.rstrip())
        match = next(filter(None, map(pattern.fullmatch, remaining)), None)
        assert match is not None, f"{where}: the output has no line {wanted!r} there:\n{output}"
        bindings.bind(match, groups)


def replay_console(clone: Clone, block: Block, bindings: Bindings) -> None:
    commands = commands_of(block.text)
    status = None
    for index, (command, expected) in enumerate(commands):
        where = f"docs/migrations.md:{block.line}: $ {command}"
        if command == "echo $?":
            assert expected == [str(status)], f"{where}: the command before exited {status}"
            continue
        result = clone.run(bindings.substitute(command))
        status = result.returncode
        next_command = commands[index + 1][0] if index + 1 < len(commands) else None
        if next_command != "echo $?":
            assert status == 0, f"{where}: exited {status}:\n{result.stdout}"
        assert_output_shows(result.stdout, expected, bindings, where)


def replace_classes(models: str, block: str) -> str:
    """The models module with each class of `block` put in place of its namesake (or appended)."""
    lines = models.splitlines(keepends=True)
    existing = {
        node.name: node for node in ast.parse(models).body if isinstance(node, ast.ClassDef)
    }
    appended = []
    replacements = []
    for node in ast.parse(block).body:
        if not isinstance(node, ast.ClassDef):
            continue
        source = ast.get_source_segment(block, node, padded=True) + "\n"
        if node.name in existing:
            old = existing[node.name]
            first = min([old.lineno, *(d.lineno for d in old.decorator_list)]) - 1
            replacements.append((first, old.end_lineno, source))
        else:
            appended.append(source)
    for first, end, source in sorted(replacements, reverse=True):
        lines[first:end] = [source]
    text = "".join(lines)
    for source in appended:
        text = text.rstrip("\n") + "\n\n\n" + source
    return text


def add_to_dict(module: str, name: str, entries: str) -> str:
    """The module with `entries` added at the end of its module-level dict `name`."""
    (closing,) = [
        node.value.end_lineno
        for node in ast.parse(module).body
        if isinstance(node, ast.Assign)
        and [getattr(target, "id", None) for target in node.targets] == [name]
        and isinstance(node.value, ast.Dict)
    ]
    lines = module.splitlines(keepends=True)
    assert lines[closing - 1] == "}\n", f"{name} does not end with a line of its own"
    indented = "".join(f"    {line}" if line.strip() else line for line in entries.splitlines(True))
    lines.insert(closing - 1, indented)
    return "".join(lines)


def apply_file_block(clone: Clone, block: Block, bindings: Bindings) -> Path:
    """Do what a file block shows; the path of the file."""
    where = f"docs/migrations.md:{block.line}"
    marker, _, body = block.text.partition("\n")
    match = FILE_MARKER.match(marker)
    assert match, f"{where}: a walkthrough's Python block starts with `# <path> (<what>)`"
    path = clone.root / bindings.substitute(match["path"])
    kind = match["kind"]
    if kind == "changed classes":
        path.write_text(replace_classes(path.read_text(encoding="utf-8"), body), encoding="utf-8")
    elif match["dict"]:
        source = path.read_text(encoding="utf-8")
        path.write_text(add_to_dict(source, match["dict"], body), encoding="utf-8")
    elif kind == "new file":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(bindings.substitute(body), encoding="utf-8")
    else:
        assert path.is_file(), f"{where}: no command generated {path.name}"
        generated = path.read_text(encoding="utf-8")
        shown = CREATE_DATE.sub(CREATE_DATE.search(generated)[0], bindings.substitute(body))
        if kind == "as alembic wrote it":
            assert shown == generated, (
                f"{where}: alembic wrote {path.name} differently:\n{generated}"
            )
        else:
            assert CHAIN_LINES.findall(shown) == CHAIN_LINES.findall(generated), (
                f"{where}: the edited file changes the revision's place in the chain:\n{generated}"
            )
            path.write_text(shown, encoding="utf-8")
    return path


def run_checks(clone: Clone, step: str, added_tests: list[str]) -> None:
    """The clone's checks, the pytest halves side by side while the commands run."""
    files = " ".join([*CHECK_TESTS, *added_tests])
    with ThreadPoolExecutor(len(TEST_HALVES)) as pool:
        halves = [
            pool.submit(clone.run, f"python -m pytest -q -x -k '{half}' {files}", CHECK_TIMEOUT_S)
            for half in TEST_HALVES
        ]
        for command in CHECK_COMMANDS:
            result = clone.run(command)
            assert result.returncode == 0, (
                f"after step {step!r}, `{command}` fails:\n{result.stdout}"
            )
        for half in halves:
            tests = half.result()
            assert tests.returncode == 0, f"after step {step!r}, the suite fails:\n{tests.stdout}"


def test_the_walkthrough_is_numbered_steps_each_with_commands() -> None:
    """The parser sees every step: numbered 1, 2, ... in order, each with a console block."""
    steps = [step for step in walkthrough_steps(DOC.read_text(encoding="utf-8")) if step.title]
    numbers = [step.title.split(".")[0] for step in steps]
    assert numbers == [str(number) for number in range(1, len(steps) + 1)], numbers
    assert all(any(block.lang == "console" for block in step.blocks) for step in steps)


@pytest.mark.timeout(1200)
def test_the_walkthrough_replays_green(tmp_path: Path, postgres_admin: sa.Engine) -> None:
    """Every step of the walkthrough, done as the doc shows, leaves the suite's checks green."""
    (tmp_path / "clone").mkdir()
    clone = Clone.of_working_tree(tmp_path / "clone", tmp_path / "data")
    bindings = Bindings()
    added_tests: list[str] = []
    for step in walkthrough_steps(DOC.read_text(encoding="utf-8")):
        for block in step.blocks:
            if block.lang == "console":
                replay_console(clone, block, bindings)
            elif block.lang == "python":
                path = apply_file_block(clone, block, bindings).relative_to(clone.root)
                new_test = path.parts[0] == "tests" and path.name.startswith("test_")
                if new_test and str(path) not in added_tests:
                    added_tests.append(str(path))
        if step.title:
            run_checks(clone, step.title, added_tests)
