"""pytest-alembic's built-in and experimental tests, on its documented set-up (conftest.py)."""

from pytest_alembic.tests import (  # noqa: F401
    test_model_definitions_match_ddl,
    test_single_head_revision,
    test_up_down_consistency,
    test_upgrade,
)
from pytest_alembic.tests.experimental import (
    test_all_models_register_on_metadata as all_models_register_on_metadata,
)
from pytest_alembic.tests.experimental import (  # noqa: F401
    test_downgrade_leaves_no_trace,
)


def test_all_models_register_on_metadata(alembic_runner) -> None:
    all_models_register_on_metadata(alembic_runner, "app.data")
