"""base -> head -> base -> head with rows, one revision at a time, on SQLite and PostgreSQL.

The chain is read from the script directory. Each table's rows
(tests/revision_data.py) are written when the revision that creates it has run;
every later step that keeps a table must keep its rows, and a second climb
from base must give the same rows as the first. An upgrade may fill a NULL (a
data migration, docs/migrations.md "Data migrations") but change no other
value; a downgrade must give back the rows as they were before its upgrade.
Each step down undoes its revision alone, so the walk also goes through a
revision `alembic merge heads` wrote and the two branches it joins.
"""

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory

from app.config import Settings, load_settings
from app.engine import make_engine
from app.migration.adoption.schema_shape import app_tables
from app.migration.guarded_run import database_revision
from app.migration.revisions import alembic_config
from tests.chain import (
    CHAIN,
    HEAD,
    SCRIPT,
    InjectedRevision,
    chain_of,
    downgrade_target_undoing,
    project_config,
    project_with,
    tables_created_by,
)
from tests.revision_data import TABLE_ROWS, rows_at, seed_rows_request
from tests.row_dump import digest

Rows = dict[str, dict[str, list[tuple]]]
"""Table -> column -> that column's values over the table's rows, in row order."""


def migrate(settings: Settings, direction: str, revision: str) -> None:
    getattr(command, direction)(alembic_config(settings=settings), revision)


def insert_rows(engine: sa.Engine, tables: dict[str, list[dict]]) -> None:
    with engine.begin() as connection:
        for table_name, rows in tables.items():
            table = sa.Table(table_name, sa.MetaData(), autoload_with=connection)
            connection.execute(table.insert(), rows)


def all_rows(engine: sa.Engine) -> Rows:
    """Every app table's rows, by column, in primary key order."""
    found = {}
    with engine.connect() as connection:
        for name in app_tables(connection):
            table = sa.Table(name, sa.MetaData(), autoload_with=connection)
            key = list(table.primary_key.columns) or list(table.columns)
            rows = connection.execute(sa.select(table).order_by(*key)).mappings().all()
            found[name] = {column.name: [row[column.name] for row in rows] for column in table.c}
    return found


def kept(old: list, new: list, fills: bool) -> bool:
    """Whether a column's values are kept: equal, or (with `fills`) only NULLs given a value."""
    if fills and len(old) == len(new):
        return all(was is None or was == now for was, now in zip(old, new, strict=True))
    return old == new


def lost_rows(before: Rows, after: Rows, step: str, fills: bool = False) -> list[str]:
    """What `step` changed in the columns it kept of the tables it kept, with counts and digests."""
    changed = []
    for table in before.keys() & after.keys():
        for column in before[table].keys() & after[table].keys():
            old, new = before[table][column], after[table][column]
            if not kept(old, new, fills):
                changed.append(
                    f"{step}: {table}.{column} had {len(old)} values (digest {digest(old)}),"
                    f" now {len(new)} (digest {digest(new)})"
                )
    return changed


def climb(settings: Settings, engine: sa.Engine) -> list[Rows]:
    """base -> head one revision at a time, writing each new table's rows.

    The rows before each revision, then the rows at head.
    """
    states = [all_rows(engine)]
    for revision in CHAIN:
        migrate(settings, "upgrade", revision)
        now = all_rows(engine)
        assert not lost_rows(states[-1], now, f"upgrade to {revision}", fills=True)
        insert_rows(engine, rows_at(revision))
        states.append(all_rows(engine))
    return states


def descend(settings: Settings, engine: sa.Engine, states: list[Rows]) -> None:
    """head -> base one revision at a time; each step gives back the rows before its upgrade."""
    for revision, before in zip(reversed(CHAIN), reversed(states[:-1]), strict=True):
        migrate(settings, "downgrade", downgrade_target_undoing(SCRIPT, revision))
        assert not lost_rows(before, all_rows(engine), f"downgrade of {revision}")


def branch_revision(revision: str, table: str) -> InjectedRevision:
    """A revision after HEAD that creates `table`; two of them are two git branches' revisions."""
    return InjectedRevision(
        revision,
        f"Create {table}",
        f'    op.create_table("{table}", sa.Column("id", sa.Integer, primary_key=True))',
        f'    op.drop_table("{table}")',
        down_revision=HEAD,
    )


LEFT = branch_revision("1ef7b7a0c001", "left_probe")
RIGHT = branch_revision("1ef7b7a0c002", "right_probe")
MERGE = InjectedRevision(
    "1ef7b7a0c003",
    "Merge heads",
    "    pass",
    "    pass",
    down_revision=(LEFT.revision, RIGHT.revision),
)


def test_each_step_down_undoes_one_revision_across_a_merge(tmp_path: Path) -> None:
    """The descent's steps on a history that `alembic merge heads` joined.

    Between the two branches' revisions and their merge the database has two
    heads, where `downgrade -1` undoes either branch and refuses the merge.
    """
    project = project_with(tmp_path, [LEFT, RIGHT, MERGE])
    script = ScriptDirectory(str(project / "migrations"))
    (tmp_path / "data").mkdir()
    settings = load_settings({"DATA_DIR": str(tmp_path / "data")})
    config = project_config(project, settings)
    engine = make_engine(settings.database_url)

    def state() -> tuple[set[str], list[str]]:
        with engine.connect() as connection:
            return set(database_revision(settings)), app_tables(connection)

    try:
        climbed = [state()]
        for revision in chain_of(script):
            command.upgrade(config, revision)
            climbed.append(state())
        assert ({LEFT.revision, RIGHT.revision}, climbed[-2][1]) in climbed
        for revision, before in zip(
            reversed(chain_of(script)), reversed(climbed[:-1]), strict=True
        ):
            command.downgrade(config, downgrade_target_undoing(script, revision))
            assert state() == before, f"downgrade of {revision}"
    finally:
        engine.dispose()


def test_every_table_at_head_has_rows_to_migrate() -> None:
    created = {
        table: revision for revision, tables in tables_created_by().items() for table in tables
    }
    missing = [
        seed_rows_request(table, revision)
        for table, revision in created.items()
        if table not in TABLE_ROWS
    ]
    assert not missing, "\n".join(missing)


def test_rows_survive_base_head_base_head(settings: Settings) -> None:
    engine = make_engine(settings.database_url)
    try:
        states = climb(settings, engine)
        at_head = states[-1]
        empty = [table for table, columns in at_head.items() if not next(iter(columns.values()))]
        assert not empty, (
            f"tables without rows at head: {empty}; unless a revision deletes them, they need "
            "rows in TABLE_ROWS, tests/revision_data.py "
            "(test_every_table_at_head_has_rows_to_migrate says what to add)"
        )

        descend(settings, engine, states)
        assert all_rows(engine) == {}
        assert database_revision(settings) == ()

        assert climb(settings, engine)[-1] == at_head
        assert database_revision(settings) == (CHAIN[-1],)
    finally:
        engine.dispose()
