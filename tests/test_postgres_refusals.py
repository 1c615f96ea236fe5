"""A PostgreSQL server that is up and refuses the connection fails at once; unreachable retries.

Waiting cannot cure an unknown database (SQLSTATE 3D000) or role, or a role
that may not log in (28000), so the upgrade says so in one line without going
through DB_CONNECT_RETRIES; a server that does not answer is still waited for.
The test server trusts every local connection, so a wrong password (28P01)
is refused by tests/fake_postgres.py's loopback server instead, which speaks
the protocol a real server does for `password` authentication.
"""

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from tests.conftest import postgres_server_url
from tests.fake_postgres import password_refusing_server
from tests.legacy_data import VENV_BIN, command_environment, failure_line, run_command

RETRIES = "5"
RETRY_LOG = "Database not reachable yet"
UNREACHABLE_URL = "postgresql+psycopg://u:s3cretpw@127.0.0.1:1/db"
UPGRADES = {
    "anibridge migrate": ([str(VENV_BIN / "anibridge"), "migrate"], "anibridge: error:"),
    "alembic upgrade head": ([str(VENV_BIN / "alembic"), "upgrade", "head"], "FAILED:"),
}
EVERY_COMMAND = {
    **UPGRADES,
    "anibridge (the service)": ([str(VENV_BIN / "anibridge")], "anibridge: error:"),
    "anibridge status": ([str(VENV_BIN / "anibridge"), "status"], "anibridge: error:"),
    "anibridge plan": ([str(VENV_BIN / "anibridge"), "plan"], "anibridge: error:"),
    "python -m app.migrate": ([str(VENV_BIN / "python"), "-m", "app.migrate"], "anibridge: error:"),
}
WRONG_PASSWORD = "password authentication failed"
ATTEMPTS_AT_ONCE = 2
"""A connection, and the libpq ping that tells a refusal from a server still starting."""


@pytest.fixture
def role_without_login(postgres_admin: sa.Engine) -> Iterator[str]:
    """A role that exists but may not log in; dropped at the end."""
    name = f"anibridge_nologin_{uuid.uuid4().hex[:8]}"
    with postgres_admin.connect() as connection:
        connection.execute(sa.text(f'CREATE ROLE "{name}" NOLOGIN'))
    yield name
    with postgres_admin.connect() as connection:
        connection.execute(sa.text(f'DROP ROLE "{name}"'))


def refused_urls(role_without_login: str) -> dict[str, str]:
    server = postgres_server_url()
    unknown = f"anibridge_missing_{uuid.uuid4().hex[:8]}"
    return {
        "unknown database": server.set(database=unknown),
        "unknown role": server.set(username=unknown),
        "role without login": server.set(username=role_without_login),
    }


@pytest.mark.timeout(120)
@pytest.mark.parametrize("upgrade", UPGRADES)
def test_a_refusal_waiting_cannot_cure_fails_at_once_in_one_line(
    upgrade: str, role_without_login: str, tmp_path
) -> None:
    argv, marker = UPGRADES[upgrade]
    for case, url in refused_urls(role_without_login).items():
        shown = url.render_as_string(hide_password=False)
        environ = command_environment(tmp_path, shown, DB_CONNECT_RETRIES=RETRIES)

        result = run_command(argv, environ)

        line = failure_line(result, marker)
        assert RETRY_LOG not in result.stdout + result.stderr, case
        assert "waiting will not help" in line and shown in line, case
        assert list(tmp_path.iterdir()) == [], case


def test_an_unreachable_server_is_still_waited_for(tmp_path) -> None:
    environ = command_environment(tmp_path, UNREACHABLE_URL, DB_CONNECT_RETRIES="1")

    result = run_command([str(VENV_BIN / "anibridge"), "migrate"], environ)

    line = failure_line(result, "anibridge: error:")
    assert f"{RETRY_LOG} (attempt 1 of 2)" in result.stderr
    assert "waiting will not help" not in line


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", EVERY_COMMAND)
def test_a_wrong_password_fails_at_once_in_one_line(command: str, tmp_path) -> None:
    argv, marker = EVERY_COMMAND[command]
    with password_refusing_server() as server:
        url = f"postgresql+psycopg://app:wrong-password@127.0.0.1:{server.port}/anibridge"
        environ = command_environment(tmp_path, url, DB_CONNECT_RETRIES=RETRIES)

        result = run_command(argv, environ)

    line = failure_line(result, marker)
    assert WRONG_PASSWORD in line and "wrong-password" not in line, line
    assert server.passwords and set(server.passwords) == {"wrong-password"}
    assert 1 <= server.startups <= ATTEMPTS_AT_ONCE, f"{server.startups} connection attempts"
    assert RETRY_LOG not in result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == []
