"""Fill job.note in one UPDATE built with SQLAlchemy."""

import sqlalchemy as sa
from alembic import op

revision = "fill_sqlalchemy_update"
down_revision = None


def upgrade() -> None:
    job = sa.table("job", sa.column("note", sa.Text()))
    op.execute(job.update().values(note="none"))
